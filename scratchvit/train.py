"""Train or fine-tune a ViT: ``python -m scratchvit.train`` (``mpiexec -n N ...`` for data parallelism).

Without --config it runs the fashion-mnist preset, the Quickstart (a small ViT from scratch on
Fashion-MNIST, about 10 minutes on a 2-core CPU), and its first line says so. A setting that a preset
leaves out takes the default shown by --help, the paper's fine-tuning recipe (Dosovitskiy et al., 2021,
Appendix B.1.1, and the official vit_jax ``configs/common.py``): SGD with momentum 0.9, no weight
decay, global-norm clipping at 1, linear warmup then cosine decay, batch 512 (reach it with
--accum-steps on a small machine), 2% of the training set held out for validation.

Examples:
    # the Quickstart: the fashion-mnist preset (add --device gpu for a GPU)
    python -m scratchvit.train
    # the same into another folder, for 20 epochs
    python -m scratchvit.train --config fashion-mnist --epochs 20 --out runs/fmnist
    # fine-tune the official ImageNet-21k ViT-B/16 on CIFAR-10 at 384 px, as the paper
    python -m scratchvit.train --config cifar10-finetune --checkpoint ViT-B_16.npz --device gpu
    # carry on a stopped run
    python -m scratchvit.train --out runs/fmnist --resume
    # the same global batch over 2 processes (MPI, pip install 'scratchvit[mpi]')
    mpiexec -n 2 python -m scratchvit.train

A run writes to --out: config.json (every setting), metrics.jsonl (one JSON object per line),
last.npz and best.npz (official checkpoint layout), state.npz (the resume point: parameters,
optimiser state, step, best validation accuracy). Everything is written atomically; Ctrl-C stops at
the end of the current step, saves and exits (a second Ctrl-C exits at once, without saving);
--resume continues bit for bit where the run stopped. Settings: scratchvit/settings.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import cpu, distributed, optim, runs
from .backend import module_for
from .checkpoint import load_checkpoint
from .configs import MaskedPatchConfig, ResNetConfig, get_config
from .data import GREY_DATASETS, Batches, split_train_val
from .evaluate import evaluate, evaluate_masked_patch, open_dataset
from .files import WriteError, write_error, write_text_atomic
from .model import ViT
from .settings import TrainSettings, resolve_settings
from .step import LossScale, StepResult, train_step

# The first line of an fp16 run on the CPU (bench/RESULTS.md, "fp16 on the CPU", has the measurement).
FP16_ON_CPU = ("--precision fp16 on the CPU: a GPU's numerics (float16 matrix products accumulated in float32), "
               "not its speed: NumPy's float16 arithmetic outside the matrix products is slow, and a training step "
               "takes several times as long as in fp32 (about 3x for the Quickstart's); fp16 pays on a GPU")


def build_model(s: TrainSettings, num_classes: int, log=print):
    """A fresh ViT from --model and overrides, or one loaded from --checkpoint as the official fine-tuning
    starts: a zero head of ``num_classes`` (whatever the file's class count), no pre-logits, the
    position-embedding grid resized to --image-size (a masked-patch pre-training's [mask] embedding and
    token head dropped, with a line to ``log``)."""
    if s.checkpoint:
        model = ViT.from_checkpoint(s.checkpoint, num_classes=num_classes, image_size=s.image_size,
                                    device=s.device, dtype=s.dtype, gelu=s.gelu, new_head=True, log=log)
        model.config = model.config.replace(**regularisers(s))
        return model
    return ViT(model_config(s, num_classes), seed=s.seed, device=s.device, dtype=s.dtype)


def regularisers(s: TrainSettings) -> dict:
    """The ViTConfig rates of --dropout, --attention-dropout and --drop-path (official field names)."""
    return {"dropout_rate": s.dropout, "attention_dropout_rate": s.attention_dropout, "drop_path_rate": s.drop_path}


def model_config(s: TrainSettings, num_classes: int = 1):
    """The geometry of a fresh model from --model and its overrides (raises ValueError on a bad one)."""
    base = resnet_override(get_config(s.model), s.resnet, s.resnet_width)
    masked_patch = None
    if s.objective == "masked-patch":  # paper Sec. 4.6: the [mask] embedding and the colour head join the model
        masked_patch = MaskedPatchConfig(channels=1 if s.dataset in GREY_DATASETS else 3, mask_ratio=s.mask_ratio,
                                         mask_fraction=s.mask_fraction, random_fraction=s.random_fraction)
    return get_config(base, image_size=s.image_size, patch_size=s.patch_size, hidden_size=s.hidden_size,
                      num_layers=s.num_layers, num_heads=s.num_heads, mlp_dim=s.mlp_dim, classifier=s.classifier,
                      gelu=s.gelu, num_classes=num_classes, representation_size=None, masked_patch=masked_patch,
                      **regularisers(s))


def resnet_override(config, resnet: str | None, width: float | None):
    """``config`` with the ResNet of --resnet ("3,4,9", "root" or "none") and --resnet-width (None: keep).

    Raises:
        ValueError: --resnet not a comma-separated list of positive integers, "root" or "none"; a width
            without a ResNet; a geometry that does not fit (see :class:`~scratchvit.configs.ViTConfig`).
    """
    current = config.resnet
    if resnet is not None:
        text = resnet.strip().lower()
        if text == "none":
            if width is not None:
                raise ValueError("--resnet-width needs a ResNet, but --resnet is none")
            # the same tokens without the ResNet: patches of its stride in pixels (16 for R50+ViT-B_16)
            return dataclasses.replace(config, resnet=None, patch_size=config.effective_patch_size)
        try:
            layers = () if text == "root" else tuple(int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"--resnet must be units per stage like 3,4,9, or root, or none; got {resnet!r}") from None
        current = ResNetConfig(layers, current.width_factor if current is not None else 1)
    if width is not None:
        if current is None:
            raise ValueError("--resnet-width needs a ResNet: this model has none (add --resnet, e.g. root)")
        current = ResNetConfig(current.num_layers, int(width) if float(width).is_integer() else width)
    return dataclasses.replace(config, resnet=current)



def input_size(s: TrainSettings) -> int:
    """The model's input side, known before the data is loaded: --image-size, else the checkpoint's or model's."""
    if s.image_size:
        return s.image_size
    if s.checkpoint:
        return load_checkpoint(s.checkpoint)[0].image_size
    return model_config(s).image_size


def load_data(s: TrainSettings, log=print, dist=None):
    """The dataset of --dataset (imagefolder: decoded at the model's input size). Under MPI (``dist``) rank 0
    loads it first, downloading it where needed, and the other ranks then read what it fetched."""
    def load():
        return open_dataset(s.dataset, s.data_dir, image_size=input_size(s) if s.dataset == "imagefolder" else None,
                            skip_bad_images=s.skip_bad_images, log=log)

    return (dist or distributed.Single()).main_first(load, f"loading the {s.dataset} dataset")


@dataclasses.dataclass
class Run:
    """What the loop and its helpers share: settings, ranks, model, optimiser, run files, schedule."""

    settings: TrainSettings
    dist: object
    model: object
    opt: object
    opt_state: dict
    metrics: runs.MetricsLog
    total_steps: int
    steps_per_epoch: int
    best_val: float = -1.0
    loss_scale: LossScale | None = None  # fp16 only

    time_limit: TimeLimit | None = None  # --time-limit, until the step count is set

    def lr(self, step: int) -> float:
        """The learning rate of (0-based) step ``step``: warmup then --schedule (optim.learning_rate). Before
        --time-limit has set the step count, ``step`` lies in the warmup, whose rates do not depend on it."""
        s = self.settings
        total = self.total_steps if self.total_steps is not None else s.warmup_steps + 1
        return optim.learning_rate(step, s.lr, total, s.warmup_steps, s.schedule)

    def log_metrics(self, step: int, split: str, **values):
        """One metrics.jsonl record (rank 0 only) with the step, the epoch and the split (and, for a masked-patch
        pre-training, "objective": its loss and accuracy are the masked-patch ones)."""
        if self.settings.objective != "classify":
            values["objective"] = self.settings.objective
        self.metrics.write(step=step, epoch=step / self.steps_per_epoch, split=split, **values)


# --time-limit: steps of the warmup that measure the step time, the first quarter (SETTLE_STEPS at most) not timed:
# caches, threads and the batch queue fill there. 30 steps (2 s alone) misjudged the Quickstart-sized hybrid's step
# by -11% and +29% on the same quiet machine (bench/RESULTS.md); 100 steps average over 4-8 s.
CALIBRATION_STEPS = 100
SETTLE_STEPS = 10


@dataclasses.dataclass
class TimeLimit:
    """--time-limit: the steps that measure the step time, and what was measured.

    The calibration steps are the run's own first steps, inside the warmup, whose learning rates do not
    depend on the total; so a run of ``--steps N`` with the count chosen here is the same run, bit for bit.
    """

    seconds: float  # the whole run's budget, from the start of train()
    first_step: int  # the step count at which the timing starts
    last_step: int  # the step count at which the total is set
    t_first: float | None = None
    eval_seconds: float = 0.0  # validation passes inside the timed steps (not step time)

    @classmethod
    def start(cls, s: TrainSettings, step: int) -> "TimeLimit":
        """The calibration of a run that starts (or resumes, before its count was set) at ``step``."""
        n = max(min(CALIBRATION_STEPS, s.warmup_steps - step), 1)
        settle = min(SETTLE_STEPS, n // 4)
        return cls(60.0 * s.time_limit, step + settle, step + n)


def fit_steps(seconds_left: float, step_seconds: float, image_seconds: float, n_val: int, n_test: int,
              eval_every: int, step: int) -> int:
    """The total step count N whose remaining steps (``step`` to N, ``step_seconds`` each), validation passes
    (at every ``eval_every``-th step and at N, ``n_val`` images) and test pass (``n_test`` images, each image
    ``image_seconds``) fit in ``seconds_left``; ``step`` if not even one step fits."""
    def cost(n):
        val_passes = n // eval_every - step // eval_every + (1 if n % eval_every else 0)
        return (n - step) * step_seconds + (val_passes * n_val + n_test) * image_seconds

    per_step = step_seconds + n_val * image_seconds / eval_every
    n = step + max(int((seconds_left - n_test * image_seconds) / per_step), 0)
    while n > step and cost(n) > seconds_left:
        n -= 1
    return n


def set_steps_by_time(run: Run, step: int, t_start: float, val_x, val_y, n_test: int, say) -> None:
    """At the calibration's last step: measure the step time, the evaluation time per image (one
    validation batch) and the time left, each averaged over the MPI ranks, set ``run.total_steps`` so that
    the run ends at --time-limit, record it in config.json (rank 0) and ``say`` it.

    Raises:
        ValueError: the limit leaves no more steps than the warmup (naming both).
    """
    s, limit = run.settings, run.time_limit
    step_seconds = (time.perf_counter() - limit.t_first - limit.eval_seconds) / (step - limit.first_step)
    m = min(len(val_y), s.eval_batch_size)
    image_seconds = evaluate(run.model, val_x[:m], val_y[:m], s.eval_batch_size, workers=s.workers)["seconds"] / m
    left = limit.seconds - (time.perf_counter() - t_start)
    # averaged over the ranks, so that every rank fits the same step count (ranks start a little apart)
    step_seconds, image_seconds, left = run.dist.allreduce_sum(np.array([step_seconds, image_seconds, left]),
                                                               "the time limit's calibration") / run.dist.size
    test_images = n_test * (2 if s.tta == "flip" else 1)  # flip averaging: a second forward pass
    total = fit_steps(left, step_seconds, image_seconds, len(val_y), test_images, s.eval_every, step)
    if total <= s.warmup_steps:
        raise ValueError(f"--time-limit {s.time_limit:g} min: at {step_seconds:.3f} s a step only {total} steps fit, "
                         f"not more than --warmup-steps {s.warmup_steps}: give more time or fewer warmup steps")
    run.total_steps, run.time_limit = total, None
    record = {"minutes": s.time_limit, "step_seconds": step_seconds, "eval_seconds_per_image": image_seconds,
              "measured_steps": [limit.first_step, step], "total_steps": total}
    if run.dist.is_main:
        runs.record_total_steps(Path(s.out), total, time_limit=record)
    say(f"time limit {s.time_limit:g} min: {step_seconds:.3f} s a step (steps {limit.first_step + 1}-{step}), "
        f"{1e3 * image_seconds:.2f} ms an evaluated image -> {total} steps; --steps {total} reruns this run exactly")


@dataclasses.dataclass
class Window:
    """The training steps since the last evaluation: summed loss (times images), images, start time."""

    loss_sum: float = 0.0
    images: int = 0
    start: float = dataclasses.field(default_factory=time.perf_counter)
    skipped: int = 0  # fp16 steps skipped for an overflow (their images count for speed, not for the loss)
    skipped_images: int = 0

    def add(self, loss: float, images: int) -> None:
        """Count one step of ``images`` images whose mean loss was ``loss``."""
        self.loss_sum += loss * images
        self.images += images

    def skip(self, images: int) -> None:
        """Count one step of ``images`` images that fp16 skipped (inf/NaN gradients): no loss."""
        self.skipped += 1
        self.skipped_images += images

    @property
    def mean_loss(self) -> float:
        """Mean training loss over the window's images (NaN if every step was skipped)."""
        return self.loss_sum / self.images if self.images else float("nan")

    def images_per_sec(self) -> float:
        """Images of every step of the window, skipped or not, per second of wall time."""
        return (self.images + self.skipped_images) / (time.perf_counter() - self.start)


def evaluate_shared(run: Run, images, labels, tta: str | None = None) -> dict:
    """Loss and accuracy of the whole set, each rank evaluating its contiguous share (sums reduced); with
    ``tta="flip"`` also "loss_flip" and "accuracy_flip" (logits averaged with the mirrored image's)."""
    lo, hi = run.dist.split_range(len(labels))
    if (lo, hi) != (0, len(labels)):
        images, labels = images[lo:hi], labels[lo:hi]  # arrays and ImageFiles slice alike
    s = run.settings
    if s.objective == "masked-patch":  # Sec. 4.6: the masked-patch loss and accuracy, the same corruption each time
        r = evaluate_masked_patch(run.model, images, s.eval_batch_size, s.seed, first_row=lo, workers=s.workers)
        sums = run.dist.allreduce_sum(np.array([r["images"], r["loss"] * r["images"], r["accuracy"] * r["images"]]),
                                      "the evaluation's reduction")
        return {"loss": sums[1] / sums[0], "accuracy": sums[2] / sums[0], "seconds": r["seconds"]}
    r = evaluate(run.model, images, labels, s.eval_batch_size, workers=s.workers, skip_bad_images=s.skip_bad_images,
                 tta=tta)
    n = len(r["labels"])  # fewer than len(labels) where --skip-bad-images left files out
    forms = [""] + ([f"_{tta}"] if tta else [])
    sums = [n]
    for f in forms:
        sums += [r[f"loss{f}"] * n, float((r[f"predictions{f}"] == r["labels"]).sum())]
    sums = run.dist.allreduce_sum(np.array(sums, dtype=np.float64), "the evaluation's reduction")
    n, out = sums[0], {"seconds": r["seconds"]}
    for i, f in enumerate(forms):
        out[f"loss{f}"] = sums[1 + 2 * i] / max(n, 1)
        out[f"accuracy{f}"] = sums[2 + 2 * i] / n if n else float("nan")
    return out


def run_step(run: Run, x, y, step: int, stop: bool = False) -> StepResult:
    """One optimiser step of the run on the global batch (x, y) (host arrays): :func:`scratchvit.step.train_step`
    with the run's settings. Returns its :class:`~scratchvit.step.StepResult`."""
    s = run.settings
    return train_step(run.model, run.opt, run.opt_state, x, y, run.lr(step), dist=run.dist,
                      accum_steps=s.accum_steps, label_smoothing=s.label_smoothing, grad_clip=s.grad_clip,
                      precision=s.precision, loss_scale=run.loss_scale, step=step, stop=stop, seed=s.seed)


@contextlib.contextmanager
def interrupts_between_steps():
    """Ctrl-C (SIGINT) while training is acted on between two steps, not wherever it lands.

    A KeyboardInterrupt raised inside the optimiser update, or after the update but before the step
    counter moves, would leave parameters and step out of step, and the state saved on the way out
    would repeat or lose an update on resume. Inside this block a first Ctrl-C only sets a flag; the
    loop checks it before each step and stops there, so the saved state is always that of a whole
    step. A second Ctrl-C raises KeyboardInterrupt at once (the flag then counts 2: nothing more is
    saved). Signals reach only the main thread: elsewhere (a training loop started from a thread)
    Ctrl-C is not redirected and the flag stays empty.

    Yields:
        a list: empty until Ctrl-C, one entry per Ctrl-C after.
    """
    pressed: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return

    def on_sigint(signum, frame):
        pressed.append(True)
        if len(pressed) > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def train(s: TrainSettings, resume: bool = False, ds=None, log=print, run_test: bool = True, dist=None) -> dict:
    """One training run with settings ``s``; returns a summary dict (status, step, accuracies, seconds).

    ``ds``: an already loaded :class:`scratchvit.data.Dataset` (the sweep reuses it). ``run_test``:
    evaluate on the test split at the end. ``dist``: from :func:`scratchvit.distributed.init` (one process if None).
    """
    t_start, out, dist = time.perf_counter(), Path(s.out), dist or distributed.Single()
    ds = ds if ds is not None else load_data(s, log, dist)
    (tr_x, tr_y), (val_x, val_y) = split_train_val(ds.train_images, ds.train_labels, s.val_fraction, s.seed)
    run, step = setup(s, resume, dist, ds, len(tr_y), len(val_y), log)
    status, last_saved, win = "done", step, Window()
    bar = progress_bar(s, dist, run.total_steps, step)
    labelled = s.objective == "classify"  # masked-patch: no labels, so no mixup or CutMix of them either
    batches = Batches(tr_x, tr_y, s.batch_size, run.model.config.image_size, train=True, augment=s.augment,
                      seed=s.seed, start_step=step, workers=s.workers, crop_min_area=s.crop_min_area,
                      skip_bad_images=s.skip_bad_images, pad=s.pad, random_erasing=s.random_erasing,
                      mixup=s.mixup if labelled else 0.0, cutmix=s.cutmix if labelled else 0.0,
                      num_classes=run.model.config.num_classes)
    stop = False  # Ctrl-C, as the last step's collective decision (every rank the same, under MPI)
    with interrupts_between_steps() as pressed:
        try:
            for step_in, x, y in batches:
                # stop here, between steps: one process reads its own flag (Ctrl-C during the previous
                # step or its evaluation); MPI ranks the flag they all got with the last step's gradients
                if stop or (dist.size == 1 and pressed):
                    raise KeyboardInterrupt
                if run.total_steps is not None and step >= run.total_steps:
                    break
                assert step_in == step
                try:
                    result = run_step(run, x, y, step, stop=bool(pressed))
                except FloatingPointError as e:
                    saved = (f"the last good checkpoint is {out / 'last.npz'} (step {last_saved})" if last_saved
                             else "no checkpoint was written before it")
                    raise FloatingPointError(f"{e}; stopping: {saved}. Try a lower --lr") from None
                step += 1
                loss, gnorm, stop = result.loss, result.grad_norm, result.stop
                if result.skipped:  # fp16 overflow: no update; the step counts, its loss does not
                    win.skip(len(y))
                else:
                    win.add(loss, len(y))
                if bar is not None:
                    bar.update(1)
                    img_s = win.images_per_sec()
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{run.lr(step - 1):.2g}",
                                    best_val=f"{max(run.best_val, 0):.3f}", img_s=f"{img_s:.0f}")
                say = bar.write if bar is not None else log
                limit, t_eval = run.time_limit, time.perf_counter()
                if step % s.eval_every == 0 or step == run.total_steps:
                    validate_and_save(run, val_x, val_y, step, win, gnorm, say)
                    last_saved, win = step, Window()
                if limit is not None:  # --time-limit's calibration: time the steps, then set their count
                    if step == limit.first_step:
                        limit.t_first = time.perf_counter()
                    elif step > limit.first_step:
                        limit.eval_seconds += time.perf_counter() - t_eval
                    if step == limit.last_step:
                        set_steps_by_time(run, step, t_start, val_x, val_y, len(ds.test_labels), say)
                        if bar is not None:
                            bar.total = run.total_steps
                            bar.refresh()
        except KeyboardInterrupt:
            status = "interrupted"
            if len(pressed) > 1:  # a second Ctrl-C, maybe in the middle of a step: its state is not saved
                log(f"\ninterrupted twice at step {step}: not saved; the last saved state is step {last_saved} "
                    f"(python -m scratchvit.train --out {out} --resume)")
            else:
                if dist.is_main:
                    runs.save_state(out, run.model, run.opt_state, step, run.best_val, s.seed, run.loss_scale)
                log(f"\ninterrupted at step {step}: saved {out / 'last.npz'} and {out / 'state.npz'}; "
                    f"continue with: python -m scratchvit.train --out {out} --resume")
        finally:
            batches.close()
            if bar is not None:
                bar.close()
    summary = {"status": status, "step": step, "total_steps": run.total_steps, "best_val_accuracy": run.best_val}
    if status == "done" and run_test:
        r = evaluate_shared(run, ds.test_images, ds.test_labels, tta=s.tta if labelled else None)
        flip = {k: r[k] for k in ("loss_flip", "accuracy_flip") if k in r}  # --tta flip, beside the plain figure
        run.log_metrics(step, "test", loss=r["loss"], accuracy=r["accuracy"], lr=run.lr(step),
                        images_per_sec=len(ds.test_labels) / r["seconds"], **flip)
        summary.update(test_accuracy=r["accuracy"], test_loss=r["loss"], **{f"test_{k}": v for k, v in flip.items()})
        also = f" ({100 * flip['accuracy_flip']:.2f}% with flip averaging)" if flip else ""
        what = "accuracy" if labelled else "masked-patch accuracy"
        log(f"done: test {what} {100 * r['accuracy']:.2f}%{also} ({len(ds.test_labels)} images), best val {what} "
            f"{100 * run.best_val:.2f}%, {step} steps in {time.perf_counter() - t_start:.0f} s; checkpoints in {out}/")
    return dict(summary, seconds=time.perf_counter() - t_start)


def setup(s: TrainSettings, resume: bool, dist, ds, n_train: int, n_val: int, log) -> tuple[Run, int]:
    """Model, optimiser, schedule and run files (config.json and metrics.jsonl on rank 0; --resume: the saved
    state). Returns (run, first step)."""
    out, model = Path(s.out), build_model(s, ds.num_classes, log)
    steps_per_epoch = max(n_train // s.batch_size, 1)
    if s.time_limit is not None:  # set after the calibration steps (set_steps_by_time); a resumed run keeps it
        total_steps = runs.recorded_total_steps(out) if resume else None
    else:
        total_steps = s.steps if s.epochs is None else max(int(round(s.epochs * steps_per_epoch)), 1)
        s.check_warmup(total_steps)
    opt = optim.make_optimizer(s.optimizer, weight_decay=s.weight_decay,
                               decay_mask=optim.decay_mask(model.layout, s.weight_decay_on, model.xp, model.dtype,
                                                           model.device_object),
                               **({"momentum": s.momentum} if s.optimizer == "sgd" else {}))
    opt_state, step, best_val = opt.init(model.flat), 0, -1.0
    loss_scale = LossScale() if s.precision == "fp16" else None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e) from e
    if resume:
        if not (out / "state.npz").exists():
            raise FileNotFoundError(f"--resume: {out} has no resume point ({out / 'state.npz'} not found: the run "
                                    "stopped before it saved one); start it again without --resume")
        step, best_val = runs.load_state(out, model, opt_state, loss_scale)
        of = total_steps if total_steps is not None else "the steps that fit (counted again: it stopped in its " \
            "calibration)"
        log(f"resuming {out} at step {step} of {of}")
    elif dist.is_main:
        (out / "state.npz").unlink(missing_ok=True)  # an earlier run's resume point in this folder is not ours
        runs.write_config(out, s.to_dict(), model, ds, train_images=n_train, val_images=n_val,
                          test_images=len(ds.test_labels), total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    metrics = runs.MetricsLog(out / "metrics.jsonl", step if resume else None, enabled=dist.is_main)
    log(describe(s, ds, model, n_train, n_val, total_steps, dist))
    limit = TimeLimit.start(s, step) if total_steps is None else None
    return Run(s, dist, model, opt, opt_state, metrics, total_steps, steps_per_epoch, best_val, loss_scale,
               limit), step


def validate_and_save(run: Run, val_x, val_y, step: int, win: Window, gnorm: float, say) -> None:
    """At an evaluation step: log the training window, evaluate on the validation split, write state.npz
    and last.npz, then best.npz if better (rank 0), and ``say`` a summary line.

    Raises:
        WriteError: a file cannot be written (a full disk); the message names it, the space it needs
        and the step the resume point holds.
    """
    out, img_s = Path(run.settings.out), win.images_per_sec()
    fp16 = {"skipped_steps": win.skipped, "loss_scale": run.loss_scale.scale} if run.loss_scale else {}
    run.log_metrics(step, "train", loss=win.mean_loss, lr=run.lr(step - 1), grad_norm=gnorm, images_per_sec=img_s,
                    **fp16)
    r = evaluate_shared(run, val_x, val_y)
    run.log_metrics(step, "val", loss=r["loss"], accuracy=r["accuracy"], lr=run.lr(step),
                    images_per_sec=len(val_y) / r["seconds"])
    better = r["accuracy"] > run.best_val
    run.best_val = max(run.best_val, r["accuracy"])
    if run.dist.is_main:  # the resume point first (state.npz, then last.npz), best.npz last
        runs.save_state(out, run.model, run.opt_state, step, run.best_val, run.settings.seed,
                        run.loss_scale)
        if better:
            runs.save_extra_copy(out / "best.npz", run.model.params, step, out)
    say(f"step {step}/{run.total_steps or '?'}  train loss {win.mean_loss:.4f}  val loss {r['loss']:.4f}"
        f"  val {'acc' if run.settings.objective == 'classify' else 'masked-patch acc'} {100 * r['accuracy']:.2f}%"
        f"  {img_s:.0f} img/s")


def describe(s, ds, model, n_train, n_val, total_steps, dist) -> str:
    """The run's opening line: data sizes, geometry, parameter count, optimiser, batch, steps, device, ranks."""
    c = model.config
    ranks = f" over {dist.size} MPI ranks ({s.batch_size // dist.size} images each)" if dist.size > 1 else ""
    steps = f"{total_steps} steps" if total_steps is not None else \
        f"the steps that fit in --time-limit {s.time_limit:g} min (counted after the first " \
        f"{min(CALIBRATION_STEPS, s.warmup_steps)} steps)"
    return (f"{ds.name}: {n_train} train / {n_val} val / {len(ds.test_labels)} test images, {ds.num_classes} classes; "
            f"model {c.image_size}px {hybrid_words(c)}patch {c.patch_size} width {c.hidden_size} depth {c.num_layers} "
            f"heads {c.num_heads} mlp {c.mlp_dim} ({model.num_params():,} parameters); {s.optimizer} lr {s.lr} batch "
            f"{s.batch_size} x {steps} on {s.device}{ranks}{masked_patch_words(c)}")


def masked_patch_words(c) -> str:
    """The opening line's words on a masked-patch pre-training (paper Sec. 4.6), "" for classification."""
    m = c.masked_patch
    if m is None:
        return ""
    return (f"; objective masked-patch (labels unused, and with them --label-smoothing, --mixup, --cutmix, --tta): "
            f"{100 * m.mask_ratio:g}% of the patches corrupted "
            f"({100 * m.mask_fraction:g}% [mask], {100 * m.random_fraction:g}% another patch), each predicted as one "
            f"of {m.num_classes} mean colours")


def hybrid_words(c) -> str:
    """"ResNet root 64ch + " / "ResNet (3, 4, 9) width 64 + " for a hybrid's opening line, "" for a ViT."""
    if c.resnet is None:
        return ""
    what = "root" if not c.resnet.num_layers else str(c.resnet.num_layers)
    return f"ResNet {what} width {c.resnet.width} -> {c.feature_size}x{c.feature_size} map, "


def progress_bar(s, dist, total_steps, step):
    """A tqdm bar over the steps on rank 0 when --progress, else None."""
    if not (s.progress and dist.is_main):
        return None
    return tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)


def lr_sweep(s: TrainSettings, log=print, dist=None) -> float:
    """The paper's learning-rate sweep: a --sweep-steps run per rate, scored on the validation split.

    Writes out/sweep.json (rank 0) and returns the best rate.

    Raises:
        ValueError: no positive rates in --lr-sweep. KeyboardInterrupt: Ctrl-C stopped one of the runs
        (its state is saved in its own folder, out/sweep_lr<rate>; nothing is scored).
    """
    rates = [float(r) for r in str(s.lr_sweep).split(",") if r.strip()]
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"--lr-sweep needs positive comma-separated rates, got {s.lr_sweep!r}")
    ds, results = load_data(s, log, dist), []
    for lr in rates:
        sub = s.replace(lr=lr, lr_sweep=None, steps=s.sweep_steps, epochs=None, eval_every=s.sweep_steps,
                        warmup_steps=min(s.warmup_steps, s.sweep_steps // 5), out=str(Path(s.out) / f"sweep_lr{lr:g}"))
        log(f"sweep: lr {lr:g}, {sub.steps} steps")
        r = train(sub, ds=ds, log=log, run_test=False, dist=dist)
        if r["status"] != "done":  # Ctrl-C: a cut-short run scores nothing; stop the whole sweep
            raise KeyboardInterrupt(f"the learning-rate sweep was interrupted at lr {lr:g}")
        results.append({"lr": lr, "val_accuracy": r["best_val_accuracy"]})
    best = max(results, key=lambda r: r["val_accuracy"])["lr"]
    if dist is None or dist.is_main:
        Path(s.out).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(s.out) / "sweep.json",
                          json.dumps({"results": results, "best_lr": best}, indent=2) + "\n")
    log("sweep: " + ", ".join(f"lr {r['lr']:g} -> val {100 * r['val_accuracy']:.2f}%" for r in results)
        + f"; best {best:g}")
    return best


def main(argv=None) -> int:
    """``python -m scratchvit.train``: settings from ``argv`` (the command line if None; without --config the
    fashion-mnist preset, which the first line names), then the sweep (--lr-sweep), the run and the test pass.

    Returns:
        the exit status: 0 done; 2 a setting, file or dataset that cannot work, --resume without a resume
        point, or a file that cannot be written (a full disk: the file and the space it needs; the last
        complete resume point is left) (the message on stderr, one line);
        3 the loss stopped being finite; 130 stopped by Ctrl-C (the state of the last whole step is
        saved: --resume continues).
    """
    cpu.configure()
    try:
        notes = []
        s, resume = resolve_settings(argv, description=__doc__, note=notes.append)
        if s.precision == "fp16" and s.device == "cpu":
            notes.append(FP16_ON_CPU)
        if s.device == "gpu":
            module_for("gpu")
        dist = distributed.init(s.distributed, s.mpi_timeout, s.device)
        dist.check_same(s.digest())
        if s.batch_size % (dist.size * s.accum_steps):
            raise ValueError(f"--batch-size {s.batch_size} is not divisible by {dist.size} MPI ranks x --accum-steps "
                             f"{s.accum_steps}")
        log = functools.partial(print, flush=True) if dist.is_main else (lambda *a, **k: None)
        for line in notes:  # the run's first lines: which preset runs when none was named; fp16 on the CPU
            log(line)
        if s.lr_sweep and not resume:
            s = s.replace(lr=lr_sweep(s, log, dist), lr_sweep=None)
        summary = train(s, resume, log=log, dist=dist)
    except (ValueError, FileNotFoundError, RuntimeError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as e:  # raised by lr_sweep after a run saved its state; a plain run returns below
        print(f"stopped: {e}" if str(e) else "stopped", file=sys.stderr)
        return 130
    return 0 if summary["status"] == "done" else 130


if __name__ == "__main__":
    sys.exit(main())
