"""The files of a training run in ``--out``, next to the checkpoints (all written atomically).

- ``config.json``: every setting ("settings"), the model geometry ("model_config"), the dataset's
  "class_names" and sizes (:func:`write_config`; read back by --resume and by the predict CLI);
- ``metrics.jsonl``: one JSON object per line (:class:`MetricsLog`);
- ``last.npz`` / ``best.npz``: parameters in the official checkpoint layout;
- ``state.npz``: the resume point in one file: parameters, optimiser state, step, best validation
  accuracy, seed (:func:`save_state`, :func:`load_state`). It repeats last.npz's parameters so that a
  crash between the two writes can never pair one step's parameters with another step's optimiser,
  and it is written first: last.npz and best.npz are extra copies, written after it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .backend import to_device, to_numpy
from .checkpoint import read_npz, save_checkpoint, save_npz_atomic
from .files import WriteError, write_error, write_text_atomic
from .optim import state_by_name


def write_config(out: Path, settings: dict, model, ds, **sizes) -> None:
    """config.json: {"settings", "model_config", "dataset", "num_classes", "class_names", "num_params", **sizes}."""
    write_text_atomic(out / "config.json", json.dumps({
        "settings": settings, "model_config": model.config.to_dict(), "dataset": ds.name,
        "num_classes": ds.num_classes, "class_names": list(ds.class_names), **sizes,
        "num_params": model.num_params()}, indent=2) + "\n")


def record_total_steps(out: Path, total_steps: int, **records) -> None:
    """Set config.json's "total_steps" (and top-level ``records``, e.g. time_limit=...) once a run knows it:
    --time-limit counts its steps after the calibration (read back by :func:`recorded_total_steps`)."""
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(total_steps=total_steps, **records)
    write_text_atomic(out / "config.json", json.dumps(cfg, indent=2) + "\n")


def recorded_total_steps(out: Path) -> int | None:
    """config.json's "total_steps" of the run in ``out``; None where it was not set yet (a --time-limit run
    stopped during its calibration, which a resumed run makes again)."""
    return json.loads((out / "config.json").read_text()).get("total_steps")


def run_info(checkpoint) -> dict:
    """The ``config.json`` a training run wrote next to ``checkpoint`` (a path), or {} when there is none.

    Raises:
        ValueError: the file exists but cannot be read as JSON (naming it).
    """
    path = Path(checkpoint).parent / "config.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {str(path)!r}: {e}") from e


def run_gelu(info: dict) -> str | None:
    """The GELU form ("tanh" or "erf") a run trained with, from its :func:`run_info`; None if not recorded."""
    return info.get("settings", {}).get("gelu") or info.get("model_config", {}).get("gelu")


class MetricsLog:
    """metrics.jsonl: one JSON object per line, flushed at once. On resume, lines past the resumed
    step (written after the last checkpoint) are dropped so that the log matches the state.
    ``enabled=False`` (MPI ranks other than 0) writes nothing."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is not None and path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            kept = []
            for i, ln in enumerate(lines):
                try:
                    record = json.loads(ln)
                except json.JSONDecodeError:
                    if i == len(lines) - 1:  # a line cut short by a crash while it was appended
                        break
                    raise ValueError(f"--resume: {path} line {i + 1} is not JSON: {ln[:80]!r}") from None
                if record["step"] <= resume_step:
                    kept.append(ln)
            write_text_atomic(path, "".join(ln + "\n" for ln in kept))
        elif path.exists():
            path.unlink()

    def write(self, **record):
        """Append one record.

        Raises:
            WriteError: the line cannot be written (a full disk: named with the space it needs).
        """
        if self.enabled:
            line = json.dumps(record) + "\n"
            try:
                with open(self.path, "a") as f:
                    f.write(line)
            except OSError as e:
                raise write_error(self.path, e, len(line)) from e


def save_state(out: Path, model, opt_state: dict, step: int, best_val: float, seed: int, loss_scale=None) -> None:
    """state.npz (the resume point: parameters, optimiser state, step, best validation accuracy, seed,
    an fp16 run's loss scale) first, then last.npz (the same parameters, official layout, model dtype), each
    written atomically.
    The resume point goes first so that a failure on the way (a full disk) leaves a whole one: the new
    one, or the previous one if state.npz itself could not be written.

    Raises:
        WriteError: a file cannot be written (the message names it, the space it needs, and which
        step the resume point in ``out`` holds).
    """
    layout = model.layout  # the flat buffers come to the host whole, one copy each, and are cut there
    arrays = {f"params/{k}": v for k, v in layout.views(to_numpy(model.flat)).items()}
    arrays.update({f"opt/{k}": v for k, v in state_by_name({k: to_numpy(v) for k, v in opt_state.items()},
                                                              layout).items()})
    arrays["step"] = np.array(step, np.int64)
    arrays["best_val_accuracy"] = np.array(best_val, np.float64)
    arrays["seed"] = np.array(seed, np.int64)
    if loss_scale is not None:  # fp16: the dynamic loss scale (scratchvit.step.LossScale)
        arrays.update(loss_scale.state())
    try:
        save_npz_atomic(out / "state.npz", arrays)
    except WriteError as e:
        raise WriteError(e.errno, f"{e.strerror}; {previous_resume_point(out)}") from e
    save_extra_copy(out / "last.npz", model.params, step, out)


def previous_resume_point(out: Path) -> str:
    """What --resume would continue from in ``out``, in words, for an error after a failed save."""
    path = out / "state.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return f"the resume point {path} still holds step {int(z['step'])} (--resume continues from it)"
    except (OSError, ValueError, KeyError):
        return f"no resume point was saved in {out} yet"


def save_extra_copy(path: Path, params: dict, step: int, out: Path) -> None:
    """last.npz or best.npz (parameters, official layout, model dtype), written after the resume point.

    Raises:
        WriteError: it cannot be written (the message adds that the resume point holds ``step``).
    """
    try:
        save_checkpoint(path, params, dtype=None)
    except WriteError as e:
        raise WriteError(e.errno, f"{e.strerror}; the resume point {out / 'state.npz'} holds step {step} "
                                  f"(--resume continues from it)") from e


def load_state(out: Path, model, opt_state: dict, loss_scale=None) -> tuple[int, float]:
    """Restore parameters, optimiser state (and an fp16 run's ``loss_scale``, a
    :class:`scratchvit.step.LossScale`) from state.npz in place; return (step, best_val_accuracy).

    The file stores every array per parameter name ("params/<name>", "opt/<slot>/<name>", "opt/count"), as
    it did before the flat buffers (:mod:`scratchvit.flat`): each is written into its view of the model's
    flat buffer and of the optimiser's (:func:`scratchvit.optim.state_by_name`), so a resume point written
    before them loads as it is. A state.npz written before it held the parameters (older runs) takes them
    from last.npz.

    Raises:
        FileNotFoundError / ValueError: missing files, or arrays whose names or shapes are not this
        run's, naming the file.
    """
    path = out / "state.npz"
    st = read_npz(path)
    params = {k[len("params/"):]: v for k, v in st.items() if k.startswith("params/")}
    if not params:
        path = out / "last.npz"
        params = read_npz(path)
    if set(params) != set(model.params):
        raise ValueError(f"--resume: {path} does not hold this run's parameters")
    wrong = [k for k in model.params if tuple(params[k].shape) != tuple(model.params[k].shape)]
    if wrong:
        raise ValueError(f"--resume: {path} holds {wrong[0]} of shape {tuple(params[wrong[0]].shape)}, this run's "
                         f"is {tuple(model.params[wrong[0]].shape)}")
    named = state_by_name(opt_state, model.layout)
    missing = [k for k in named if f"opt/{k}" not in st]
    if missing:
        raise ValueError(f"--resume: {out / 'state.npz'} lacks optimiser state {missing[:3]} (was the run started "
                         "with another --optimizer?)")
    wrong = [k for k, v in named.items() if tuple(st[f"opt/{k}"].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"--resume: {out / 'state.npz'} holds optimiser state {wrong[0]} of shape "
                         f"{tuple(st['opt/' + wrong[0]].shape)}, this run's is {tuple(named[wrong[0]].shape)}")
    for k, view in model.params.items():  # into the flat buffer's views: the buffer stays the model's
        view[...] = to_device(params[k], model.device, model.dtype)
    for k, view in named.items():
        if k in opt_state:  # a 0-d entry kept as it is (AdamW's step count)
            opt_state[k] = to_device(st[f"opt/{k}"], model.device)
        else:
            view[...] = to_device(st[f"opt/{k}"], model.device, model.dtype)
    if loss_scale is not None:
        loss_scale.restore(st)
    return int(st["step"]), float(st["best_val_accuracy"])
