"""Train or fine-tune a ViT: ``python -m scratchvit.train``.

Defaults follow the paper's fine-tuning recipe (Dosovitskiy et al., 2021, Appendix B.1.1, and the
official vit_jax ``configs/common.py``): SGD with momentum 0.9, no weight decay, global-norm
clipping at 1, linear warmup then cosine decay, batch 512 (reach it with --accum-steps on a small
machine), 2% of the training set held out for validation.

Examples:
    # a small ViT from scratch on Fashion-MNIST (the quickstart preset; minutes on a laptop CPU)
    python -m scratchvit.train --config fashion-mnist --out runs/fmnist
    # fine-tune the official ImageNet-21k ViT-B/16 on CIFAR-10 at 224 px, as the paper
    python -m scratchvit.train --config cifar10-finetune --checkpoint ViT-B_16.npz --device gpu
    # carry on a stopped run
    python -m scratchvit.train --out runs/fmnist --resume

A run writes to --out: config.json (every setting), metrics.jsonl (one JSON object per line),
last.npz and best.npz (official checkpoint layout), state.npz (optimiser state, step, best
validation accuracy). Everything is written atomically; Ctrl-C saves and exits; --resume
continues bit for bit where the run stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import optim
from .backend import keep_freed_memory
from .checkpoint import read_npz, save_checkpoint, save_npz_atomic
from .configs import MODELS, get_config

PRESETS_DIR = Path(__file__).resolve().parent / "presets"

# Settings that define a run; config.json stores them all, --resume reads them back.
DEFAULTS = dict(
    device="cpu", dataset="cifar10", data_dir=None, model="ViT-B_16", image_size=None, patch_size=None,
    hidden_size=None, num_layers=None, num_heads=None, mlp_dim=None, classifier=None, gelu=None,
    checkpoint=None, optimizer="sgd", lr=0.03, lr_sweep=None, sweep_steps=200, momentum=0.9,
    weight_decay=0.0, schedule="cosine", steps=10000, epochs=None, warmup_steps=500, batch_size=512,
    accum_steps=1, grad_clip=1.0, augment="inception", crop_min_area=0.05, eval_every=100,
    eval_batch_size=256, val_fraction=0.02, seed=0, dtype="float32", out="runs/latest", workers=2,
    progress=True,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m scratchvit.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--config", default=None, help="a preset: a JSON file of settings, or the name of one in scratchvit/presets/ "
      f"({', '.join(sorted(p.stem for p in PRESETS_DIR.glob('*.json')))}); flags given on the command line win")
    g = ap.add_argument_group("hardware and numbers")
    g.add_argument("--device", choices=("cpu", "gpu"), help="cpu (NumPy) or gpu (CuPy) (default: cpu)")
    g.add_argument("--dtype", choices=("float32", "float64"), help="parameters and activations (default: float32)")
    g.add_argument("--seed", type=int, help="seeds the initialisation, the validation split, the data order "
                   "and the augmentation (default: 0)")
    g = ap.add_argument_group("data")
    g.add_argument("--dataset", choices=("cifar10", "cifar100", "fashion-mnist", "mnist", "imagefolder"),
                   help="dataset (default: cifar10)")
    g.add_argument("--data-dir", help="where the dataset files are; for imagefolder: ROOT with train/ and test/ "
                   "(default: a system copy, then the data/ cache, then download)")
    g.add_argument("--augment", choices=("inception", "crop-flip", "flip", "none"),
                   help="training augmentation: inception = random crop of 5%%-100%% area + flip (the paper's "
                   "fine-tuning); crop-flip = pad by 1/8 and random crop + flip; flip; none (default: inception)")
    g.add_argument("--crop-min-area", type=float, help="smallest crop area for --augment inception (default: 0.05)")
    g.add_argument("--val-fraction", type=float, help="share of the training set held out for validation "
                   "(default: 0.02)")
    g.add_argument("--workers", type=int, help="threads preparing batches in the background (default: 2)")
    g = ap.add_argument_group("model")
    g.add_argument("--model", help=f"geometry name (default: ViT-B_16); one of {', '.join(MODELS)}")
    g.add_argument("--image-size", type=int, help="input side in pixels; images are resized to it (default: the "
                   "model's 224, or the checkpoint's)")
    g.add_argument("--patch-size", type=int, help="patch side in pixels")
    g.add_argument("--hidden-size", type=int, help="token width D")
    g.add_argument("--num-layers", type=int, help="encoder blocks")
    g.add_argument("--num-heads", type=int, help="attention heads")
    g.add_argument("--mlp-dim", type=int, help="MLP hidden width")
    g.add_argument("--classifier", choices=("token", "gap"), help="class token or global average pooling")
    g.add_argument("--gelu", choices=("tanh", "erf"), help="GELU form (default: tanh, as the official model)")
    g.add_argument("--checkpoint", help="fine-tune from this official .npz (e.g. ViT-B_16.npz): the geometry comes "
                   "from the file, the head is replaced by a zero head, the position embeddings are resized")
    g = ap.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), help="sgd (momentum) or adamw (default: sgd)")
    g.add_argument("--lr", type=float, help="peak learning rate (default: 0.03)")
    g.add_argument("--lr-sweep", help="comma-separated learning rates, e.g. 0.001,0.003,0.01,0.03: a short run "
                   "of --sweep-steps for each, scored on the validation split, then the full run with the best")
    g.add_argument("--sweep-steps", type=int, help="steps of each --lr-sweep run (default: 200)")
    g.add_argument("--momentum", type=float, help="SGD momentum (default: 0.9)")
    g.add_argument("--weight-decay", type=float, help="decoupled weight decay (default: 0)")
    g.add_argument("--schedule", choices=optim.SCHEDULES, help="decay after warmup (default: cosine)")
    g.add_argument("--steps", type=int, help="optimiser steps (default: 10000)")
    g.add_argument("--epochs", type=float, help="train for this many passes over the training split instead "
                   "of --steps")
    g.add_argument("--warmup-steps", type=int, help="linear warmup steps (default: 500)")
    g.add_argument("--batch-size", type=int, help="images per optimiser step (default: 512)")
    g.add_argument("--accum-steps", type=int, help="split each batch into this many micro-batches whose "
                   "gradients are averaged: the same update with less memory (default: 1)")
    g.add_argument("--grad-clip", type=float, help="clip the global gradient norm at this value; 0 turns it off "
                   "(default: 1.0)")
    g = ap.add_argument_group("evaluation and output")
    g.add_argument("--eval-every", type=int, help="steps between validation passes and checkpoints (default: 100)")
    g.add_argument("--eval-batch-size", type=int, help="images per evaluation forward pass (default: 256)")
    g.add_argument("--out", help="output folder (default: runs/latest)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its state.npz, "
                   "with the settings of its config.json")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (one line per evaluation instead)")
    return ap


def load_preset(name_or_path: str) -> dict:
    """Settings from a preset JSON file (a path, or a name in scratchvit/presets/).

    Raises:
        FileNotFoundError: no such preset. ValueError: not JSON, or unknown keys.
    """
    path = Path(name_or_path)
    if not path.exists():
        path = PRESETS_DIR / f"{name_or_path}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.json")))
        raise FileNotFoundError(f"--config {name_or_path!r}: no such file, and no preset of that name ({known})")
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {path}: not valid JSON: {e}") from e
    settings.pop("_comment", None)
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"--config {path}: unknown settings {sorted(unknown)}")
    return settings


def resolve_settings(argv=None) -> dict:
    """Defaults <- preset (--config) <- command-line flags; with --resume, the run's config.json."""
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "resume")}
    s = dict(DEFAULTS)
    if args.config:
        s.update(load_preset(args.config))
    s.update(given)
    if "steps" in given and "epochs" not in given:
        s["epochs"] = None  # --steps on the command line beats a preset's epochs
    s["resume"] = args.resume
    if args.resume:
        cfg_path = Path(s["out"]) / "config.json"
        if not cfg_path.exists():
            raise FileNotFoundError(f"--resume: {cfg_path} not found; nothing to resume in {s['out']}")
        saved = json.loads(cfg_path.read_text())["settings"]
        # The run's own settings win; only where it runs and how it reports may change.
        keep = {k: s[k] for k in ("device", "progress", "workers", "data_dir") if k in given}
        s = {**saved, **keep, "out": s["out"], "resume": True}
    validate_settings(s)
    return s


def validate_settings(s: dict) -> None:
    """Raise ValueError naming the setting that cannot work."""
    for k in ("batch_size", "accum_steps", "eval_every", "eval_batch_size", "sweep_steps", "workers"):
        if not isinstance(s[k], int) or s[k] < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be a positive integer, got {s[k]!r}")
    if s["batch_size"] % s["accum_steps"]:
        raise ValueError(f"--batch-size {s['batch_size']} is not divisible by --accum-steps {s['accum_steps']}")
    if s["lr"] <= 0:
        raise ValueError(f"--lr must be positive, got {s['lr']}")
    if s["epochs"] is None and (not isinstance(s["steps"], int) or s["steps"] < 1):
        raise ValueError(f"--steps must be a positive integer, got {s['steps']!r}")
    if s["warmup_steps"] < 0 or s["grad_clip"] < 0:
        raise ValueError("--warmup-steps and --grad-clip must be >= 0")
    if not 0 < s["val_fraction"] < 1:
        raise ValueError(f"--val-fraction must lie in (0, 1), got {s['val_fraction']}")
    if s["model"] not in MODELS:
        raise ValueError(f"unknown model {s['model']!r}; known models: {', '.join(MODELS)}")


# ----------------------------------------------------------------------------- building blocks
def build_model(s: dict, num_classes: int):
    """A fresh ViT from --model and overrides, or one loaded from --checkpoint (new head, resized grid)."""
    from .model import ViT  # noqa: PLC0415

    if s["checkpoint"]:
        model = ViT.from_checkpoint(s["checkpoint"], num_classes=num_classes, image_size=s["image_size"],
                                    device=s["device"], dtype=s["dtype"])
        if s["gelu"]:
            model.config = model.config.replace(gelu=s["gelu"])
        return model
    config = get_config(s["model"], image_size=s["image_size"], patch_size=s["patch_size"],
                        hidden_size=s["hidden_size"], num_layers=s["num_layers"], num_heads=s["num_heads"],
                        mlp_dim=s["mlp_dim"], classifier=s["classifier"], gelu=s["gelu"],
                        num_classes=num_classes, representation_size=None)
    return ViT(config, seed=s["seed"], device=s["device"], dtype=s["dtype"])


def accumulate_gradient(model, images, labels, accum_steps: int):
    """Mean loss and gradients of a batch computed in ``accum_steps`` equal micro-batches
    (official ``utils.accumulate_gradient``): the same result as one pass over the whole batch,
    with the activation memory of one micro-batch.
    """
    if accum_steps == 1:
        return model.loss_and_grads(images, labels)
    n = len(labels) // accum_steps
    total_loss, total = 0.0, None
    for i in range(accum_steps):
        loss, grads = model.loss_and_grads(images[i * n:(i + 1) * n], labels[i * n:(i + 1) * n])
        total_loss += loss
        if total is None:
            total = grads
        else:
            for k, g in grads.items():
                total[k] += g
    for g in total.values():
        g /= accum_steps
    return total_loss / accum_steps, total


class MetricsLog:
    """metrics.jsonl: one JSON object per line, flushed at once. On resume, lines past the resumed
    step (written after the last checkpoint) are dropped so that the log matches the state."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))
        elif path.exists():
            path.unlink()

    def write(self, **record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def save_state(out: Path, model, opt_state: dict, step: int, best_val: float, settings: dict) -> None:
    """last.npz (parameters, official layout, model dtype) then state.npz (optimiser, step), atomically."""
    save_checkpoint(out / "last.npz", model.params, dtype=None)
    arrays = {f"opt/{k}": v for k, v in opt_state.items()}
    arrays["step"] = np.array(step, np.int64)
    arrays["best_val_accuracy"] = np.array(best_val, np.float64)
    arrays["seed"] = np.array(settings["seed"], np.int64)
    save_npz_atomic(out / "state.npz", arrays)


def load_state(out: Path, model, opt_state: dict):
    """Restore parameters (last.npz) and optimiser state (state.npz); return (step, best_val_accuracy).

    Raises:
        FileNotFoundError / ValueError: missing or mismatched files, naming them.
    """
    from .backend import to_device  # noqa: PLC0415

    params = read_npz(out / "last.npz")
    st = read_npz(out / "state.npz")
    if set(params) != set(model.params):
        raise ValueError(f"--resume: {out / 'last.npz'} does not hold this run's parameters")
    for k in model.params:
        model.params[k] = to_device(params[k], model.device, model.dtype)
    missing = [k for k in opt_state if f"opt/{k}" not in st]
    if missing:
        raise ValueError(f"--resume: {out / 'state.npz'} lacks optimiser state {missing[:3]}")
    for k in list(opt_state):
        saved = st[f"opt/{k}"]
        opt_state[k] = saved if k == "count" else to_device(saved, model.device, model.dtype)
    return int(st["step"]), float(st["best_val_accuracy"])


# ----------------------------------------------------------------------------- the run
def train(s: dict, ds=None, log=print, run_test: bool = True) -> dict:
    """One training run with settings ``s`` (see DEFAULTS). Returns a summary dict.

    ``ds``: an already loaded :class:`scratchvit.data.Dataset` (the sweep reuses it).
    ``run_test``: evaluate on the test split at the end (the sweep scores on validation only).
    """
    from .data import Batches, load_dataset, split_train_val  # noqa: PLC0415
    from .evaluate import evaluate  # noqa: PLC0415

    t_start = time.perf_counter()
    out = Path(s["out"])
    out.mkdir(parents=True, exist_ok=True)
    if ds is None:
        ds = load_dataset(s["dataset"], data_dir=s["data_dir"])
    (tr_x, tr_y), (val_x, val_y) = split_train_val(ds.train_images, ds.train_labels, s["val_fraction"], s["seed"])
    model = build_model(s, ds.num_classes)
    cfg = model.config
    steps_per_epoch = max(len(tr_y) // s["batch_size"], 1)
    total_steps = s["steps"] if s["epochs"] is None else max(int(round(s["epochs"] * steps_per_epoch)), 1)
    if s["schedule"] != "constant" and s["warmup_steps"] >= total_steps:
        raise ValueError(f"--warmup-steps {s['warmup_steps']} must be below the total steps {total_steps}")
    opt = optim.make_optimizer(s["optimizer"], weight_decay=s["weight_decay"],
                               **({"momentum": s["momentum"]} if s["optimizer"] == "sgd" else {}))
    opt_state = opt.init(model.params)

    start_step, best_val = 0, -1.0
    if s.get("resume") and (out / "state.npz").exists():
        start_step, best_val = load_state(out, model, opt_state)
        log(f"resuming {out} at step {start_step} of {total_steps}")
    elif not s.get("resume"):
        (out / "config.json").write_text(json.dumps({
            "settings": {k: v for k, v in s.items() if k != "resume"},
            "model_config": cfg.to_dict(), "dataset": ds.name, "num_classes": ds.num_classes,
            "class_names": ds.class_names, "train_images": len(tr_y), "val_images": len(val_y),
            "test_images": len(ds.test_labels), "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
            "num_params": model.num_params()}, indent=2) + "\n")
    metrics = MetricsLog(out / "metrics.jsonl", start_step if s.get("resume") else None)
    log(f"{ds.name}: {len(tr_y)} train / {len(val_y)} val / {len(ds.test_labels)} test images, "
        f"{ds.num_classes} classes; model {cfg.image_size}px patch {cfg.patch_size} width {cfg.hidden_size} "
        f"depth {cfg.num_layers} heads {cfg.num_heads} mlp {cfg.mlp_dim} ({model.num_params():,} parameters); "
        f"{s['optimizer']} lr {s['lr']} batch {s['batch_size']} x {total_steps} steps on {s['device']}")

    def run_eval(step, split, images, labels):
        r = evaluate(model, images, labels, s["eval_batch_size"], workers=s["workers"])
        metrics.write(step=step, epoch=step / steps_per_epoch, split=split, loss=r["loss"],
                      accuracy=r["accuracy"], lr=optim.learning_rate(step, s["lr"], total_steps, s["warmup_steps"],
                                                                      s["schedule"]),
                      images_per_sec=len(labels) / r["seconds"])
        return r

    step = start_step
    last_saved = start_step if start_step else None
    status = "done"
    batches = Batches(tr_x, tr_y, s["batch_size"], cfg.image_size, train=True, augment=s["augment"], seed=s["seed"],
                      start_step=start_step, workers=s["workers"], crop_min_area=s["crop_min_area"])
    bar = None
    if s["progress"]:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    win_loss, win_images, win_t = 0.0, 0, time.perf_counter()
    try:
        for step_in, x, y in batches:
            if step >= total_steps:
                break
            assert step_in == step
            lr = optim.learning_rate(step, s["lr"], total_steps, s["warmup_steps"], s["schedule"])
            loss, grads = accumulate_gradient(model, x, y, s["accum_steps"])
            if not math.isfinite(loss):
                status = "nan"
                saved = (f"the last good checkpoint is {out / 'last.npz'} (step {last_saved})" if last_saved is not None
                         else "no checkpoint was written before it")
                raise FloatingPointError(f"loss is {loss} at step {step}; stopping: {saved}. Try a lower --lr")
            gnorm = optim.clip_by_global_norm(grads, s["grad_clip"])
            opt.update(model.params, grads, opt_state, lr)
            step += 1
            win_loss += loss * len(y)
            win_images += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2g}", best_val=f"{max(best_val, 0):.3f}",
                                img_s=f"{win_images / (time.perf_counter() - win_t):.0f}")
            if step % s["eval_every"] == 0 or step == total_steps:
                dt = time.perf_counter() - win_t
                metrics.write(step=step, epoch=step / steps_per_epoch, split="train", loss=win_loss / win_images,
                              lr=lr, grad_norm=gnorm, images_per_sec=win_images / dt)
                r = run_eval(step, "val", val_x, val_y)
                if r["accuracy"] > best_val:
                    best_val = r["accuracy"]
                    save_checkpoint(out / "best.npz", model.params, dtype=None)
                save_state(out, model, opt_state, step, best_val, s)
                last_saved = step
                msg = (f"step {step}/{total_steps}  train loss {win_loss / win_images:.4f}  val loss {r['loss']:.4f}"
                       f"  val acc {100 * r['accuracy']:.2f}%  {win_images / dt:.0f} img/s")
                (bar.write if bar is not None else log)(msg)
                win_loss, win_images, win_t = 0.0, 0, time.perf_counter()
    except KeyboardInterrupt:
        status = "interrupted"
        save_state(out, model, opt_state, step, best_val, s)
        log(f"\ninterrupted at step {step}: saved {out / 'last.npz'} and {out / 'state.npz'}; "
            f"continue with: python -m scratchvit.train --out {out} --resume")
    finally:
        batches.close()
        if bar is not None:
            bar.close()

    summary = {"status": status, "step": step, "total_steps": total_steps, "best_val_accuracy": best_val,
               "seconds": time.perf_counter() - t_start}
    if status == "done" and run_test:
        r = run_eval(step, "test", ds.test_images, ds.test_labels)
        summary.update(test_accuracy=r["accuracy"], test_loss=r["loss"])
        summary["seconds"] = time.perf_counter() - t_start
        log(f"done: test accuracy {100 * r['accuracy']:.2f}% ({len(ds.test_labels)} images), best val accuracy "
            f"{100 * best_val:.2f}%, {step} steps in {summary['seconds']:.0f} s; checkpoints in {out}/")
    return summary


def lr_sweep(s: dict, log=print) -> float:
    """The paper's learning-rate sweep: a --sweep-steps run per rate, scored on the validation split.

    Writes out/sweep.json and returns the best rate.
    """
    from .data import load_dataset  # noqa: PLC0415

    rates = [float(r) for r in str(s["lr_sweep"]).split(",") if r.strip()]
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"--lr-sweep needs positive comma-separated rates, got {s['lr_sweep']!r}")
    ds = load_dataset(s["dataset"], data_dir=s["data_dir"])
    results = []
    for lr in rates:
        sub = dict(s, lr=lr, lr_sweep=None, steps=s["sweep_steps"], epochs=None, resume=False,
                   warmup_steps=min(s["warmup_steps"], s["sweep_steps"] // 5),
                   eval_every=s["sweep_steps"], out=str(Path(s["out"]) / f"sweep_lr{lr:g}"))
        log(f"sweep: lr {lr:g}, {sub['steps']} steps")
        summary = train(sub, ds=ds, log=log, run_test=False)
        results.append({"lr": lr, "val_accuracy": summary["best_val_accuracy"]})
    best = max(results, key=lambda r: r["val_accuracy"])["lr"]
    Path(s["out"]).mkdir(parents=True, exist_ok=True)
    (Path(s["out"]) / "sweep.json").write_text(json.dumps({"results": results, "best_lr": best}, indent=2) + "\n")
    log("sweep: " + ", ".join(f"lr {r['lr']:g} -> val {100 * r['val_accuracy']:.2f}%" for r in results)
        + f"; best {best:g}")
    return best


def main(argv=None) -> int:
    keep_freed_memory()
    try:
        s = resolve_settings(argv)
        if s["device"] == "gpu":
            from .backend import module_for  # noqa: PLC0415

            module_for("gpu")
        if s["lr_sweep"] and not s["resume"]:
            s["lr"] = lr_sweep(s)
            s["lr_sweep"] = None
        summary = train(s)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0 if summary["status"] == "done" else 130


if __name__ == "__main__":
    sys.exit(main())
