"""Train or fine-tune a ViT: ``python -m scratchvit.train`` (``mpiexec -n N ...`` for data parallelism).

Defaults follow the paper's fine-tuning recipe (Dosovitskiy et al., 2021, Appendix B.1.1, and the
official vit_jax ``configs/common.py``): SGD with momentum 0.9, no weight decay, global-norm
clipping at 1, linear warmup then cosine decay, batch 512 (reach it with --accum-steps on a small
machine), 2% of the training set held out for validation.

Examples:
    # a small ViT from scratch on Fashion-MNIST (the quickstart preset; minutes on a laptop CPU)
    python -m scratchvit.train --config fashion-mnist --out runs/fmnist
    # fine-tune the official ImageNet-21k ViT-B/16 on CIFAR-10 at 384 px, as the paper
    python -m scratchvit.train --config cifar10-finetune --checkpoint ViT-B_16.npz --device gpu
    # carry on a stopped run
    python -m scratchvit.train --out runs/fmnist --resume
    # the same global batch over 2 processes (MPI, pip install 'scratchvit[mpi]')
    mpiexec -n 2 python -m scratchvit.train --config fashion-mnist

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
from .configs import get_config
from .data import Batches, split_train_val
from .evaluate import evaluate, open_dataset
from .files import WriteError, write_error, write_text_atomic
from .model import ViT
from .settings import TrainSettings, resolve_settings
from .step import LossScale, StepResult
from .step import train_step as train_one_step


def build_model(s: TrainSettings, num_classes: int):
    """A fresh ViT from --model and overrides, or one loaded from --checkpoint as the official fine-tuning
    starts: a zero head of ``num_classes`` (whatever the file's class count), no pre-logits, the
    position-embedding grid resized to --image-size."""
    if s.checkpoint:
        model = ViT.from_checkpoint(s.checkpoint, num_classes=num_classes, image_size=s.image_size,
                                    device=s.device, dtype=s.dtype, gelu=s.gelu, new_head=True)
        model.config = model.config.replace(**regularisers(s))
        return model
    return ViT(model_config(s, num_classes), seed=s.seed, device=s.device, dtype=s.dtype)


def regularisers(s: TrainSettings) -> dict:
    """The ViTConfig rates of --dropout, --attention-dropout and --drop-path (official field names)."""
    return {"dropout_rate": s.dropout, "attention_dropout_rate": s.attention_dropout, "drop_path_rate": s.drop_path}


def model_config(s: TrainSettings, num_classes: int = 1):
    """The geometry of a fresh model from --model and its overrides (raises ValueError on a bad one)."""
    return get_config(s.model, image_size=s.image_size, patch_size=s.patch_size, hidden_size=s.hidden_size,
                      num_layers=s.num_layers, num_heads=s.num_heads, mlp_dim=s.mlp_dim, classifier=s.classifier,
                      gelu=s.gelu, num_classes=num_classes, representation_size=None, **regularisers(s))


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

    def lr(self, step: int) -> float:
        """The learning rate of (0-based) step ``step``: warmup then --schedule (optim.learning_rate)."""
        s = self.settings
        return optim.learning_rate(step, s.lr, self.total_steps, s.warmup_steps, s.schedule)

    def log_metrics(self, step: int, split: str, **values):
        """One metrics.jsonl record (rank 0 only) with the step, the epoch and the split."""
        self.metrics.write(step=step, epoch=step / self.steps_per_epoch, split=split, **values)


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


def evaluate_shared(run: Run, images, labels) -> dict:
    """Loss and accuracy of the whole set, each rank evaluating its contiguous share (sums reduced)."""
    lo, hi = run.dist.split_range(len(labels))
    if (lo, hi) != (0, len(labels)):
        images, labels = images[lo:hi], labels[lo:hi]  # arrays and ImageFiles slice alike
    s = run.settings
    r = evaluate(run.model, images, labels, s.eval_batch_size, workers=s.workers, skip_bad_images=s.skip_bad_images)
    n = len(r["labels"])  # fewer than len(labels) where --skip-bad-images left files out
    sums = np.array([r["loss"] * n, float((r["predictions"] == r["labels"]).sum()), n])
    loss_sum, correct, n = run.dist.allreduce_sum(sums, "the evaluation's reduction")
    return {"loss": loss_sum / max(n, 1), "accuracy": correct / n if n else float("nan"), "seconds": r["seconds"]}


def train_step(run: Run, x, y, step: int, stop: bool = False) -> StepResult:
    """One optimiser step of the run on the global batch (x, y) (host arrays): :func:`scratchvit.step.train_step`
    with the run's settings. Returns its :class:`~scratchvit.step.StepResult`."""
    s = run.settings
    return train_one_step(run.model, run.opt, run.opt_state, x, y, run.lr(step), dist=run.dist,
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
    batches = Batches(tr_x, tr_y, s.batch_size, run.model.config.image_size, train=True, augment=s.augment,
                      seed=s.seed, start_step=step, workers=s.workers, crop_min_area=s.crop_min_area,
                      skip_bad_images=s.skip_bad_images, pad=s.pad, random_erasing=s.random_erasing,
                      mixup=s.mixup, cutmix=s.cutmix, num_classes=run.model.config.num_classes)
    stop = False  # Ctrl-C, as the last step's collective decision (every rank the same, under MPI)
    with interrupts_between_steps() as pressed:
        try:
            for step_in, x, y in batches:
                # stop here, between steps: one process reads its own flag (Ctrl-C during the previous
                # step or its evaluation); MPI ranks the flag they all got with the last step's gradients
                if stop or (dist.size == 1 and pressed):
                    raise KeyboardInterrupt
                if step >= run.total_steps:
                    break
                assert step_in == step
                try:
                    result = train_step(run, x, y, step, stop=bool(pressed))
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
                if step % s.eval_every == 0 or step == run.total_steps:
                    validate_and_save(run, val_x, val_y, step, win, gnorm, bar.write if bar is not None else log)
                    last_saved, win = step, Window()
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
        r = evaluate_shared(run, ds.test_images, ds.test_labels)
        run.log_metrics(step, "test", loss=r["loss"], accuracy=r["accuracy"], lr=run.lr(step),
                        images_per_sec=len(ds.test_labels) / r["seconds"])
        summary.update(test_accuracy=r["accuracy"], test_loss=r["loss"])
        log(f"done: test accuracy {100 * r['accuracy']:.2f}% ({len(ds.test_labels)} images), best val accuracy "
            f"{100 * run.best_val:.2f}%, {step} steps in {time.perf_counter() - t_start:.0f} s; checkpoints in {out}/")
    return dict(summary, seconds=time.perf_counter() - t_start)


def setup(s: TrainSettings, resume: bool, dist, ds, n_train: int, n_val: int, log) -> tuple[Run, int]:
    """Model, optimiser, schedule and run files (config.json and metrics.jsonl on rank 0; --resume: the saved
    state). Returns (run, first step)."""
    out, model = Path(s.out), build_model(s, ds.num_classes)
    steps_per_epoch = max(n_train // s.batch_size, 1)
    total_steps = s.steps if s.epochs is None else max(int(round(s.epochs * steps_per_epoch)), 1)
    s.check_warmup(total_steps)
    opt = optim.make_optimizer(s.optimizer, weight_decay=s.weight_decay,
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
        log(f"resuming {out} at step {step} of {total_steps}")
    elif dist.is_main:
        (out / "state.npz").unlink(missing_ok=True)  # an earlier run's resume point in this folder is not ours
        runs.write_config(out, s.to_dict(), model, ds, train_images=n_train, val_images=n_val,
                          test_images=len(ds.test_labels), total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    metrics = runs.MetricsLog(out / "metrics.jsonl", step if resume else None, enabled=dist.is_main)
    log(describe(s, ds, model, n_train, n_val, total_steps, dist))
    return Run(s, dist, model, opt, opt_state, metrics, total_steps, steps_per_epoch, best_val, loss_scale), step


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
    say(f"step {step}/{run.total_steps}  train loss {win.mean_loss:.4f}  val loss {r['loss']:.4f}"
        f"  val acc {100 * r['accuracy']:.2f}%  {img_s:.0f} img/s")


def describe(s, ds, model, n_train, n_val, total_steps, dist) -> str:
    """The run's opening line: data sizes, geometry, parameter count, optimiser, batch, steps, device, ranks."""
    c = model.config
    ranks = f" over {dist.size} MPI ranks ({s.batch_size // dist.size} images each)" if dist.size > 1 else ""
    return (f"{ds.name}: {n_train} train / {n_val} val / {len(ds.test_labels)} test images, {ds.num_classes} classes; "
            f"model {c.image_size}px patch {c.patch_size} width {c.hidden_size} depth {c.num_layers} heads "
            f"{c.num_heads} mlp {c.mlp_dim} ({model.num_params():,} parameters); {s.optimizer} lr {s.lr} batch "
            f"{s.batch_size} x {total_steps} steps on {s.device}{ranks}")


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
    """``python -m scratchvit.train``: settings from ``argv`` (the command line if None), then the sweep
    (--lr-sweep), the run and the test pass.

    Returns:
        the exit status: 0 done; 2 a setting, file or dataset that cannot work, --resume without a resume
        point, or a file that cannot be written (a full disk: the file and the space it needs; the last
        complete resume point is left) (the message on stderr, one line);
        3 the loss stopped being finite; 130 stopped by Ctrl-C (the state of the last whole step is
        saved: --resume continues).
    """
    cpu.configure()
    try:
        s, resume = resolve_settings(argv, description=__doc__)
        if s.device == "gpu":
            module_for("gpu")
        dist = distributed.init(s.distributed, s.mpi_timeout, s.device)
        dist.check_same(s.digest())
        if s.batch_size % (dist.size * s.accum_steps):
            raise ValueError(f"--batch-size {s.batch_size} is not divisible by {dist.size} MPI ranks x --accum-steps "
                             f"{s.accum_steps}")
        log = functools.partial(print, flush=True) if dist.is_main else (lambda *a, **k: None)
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
