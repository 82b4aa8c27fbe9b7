"""Training curves: loss and accuracy against step, from each run's ``metrics.jsonl``.

    python -m scratchvit.plot runs/fashion-mnist [runs/other ...] [--out curves.png]

Each argument is a run folder (holding ``metrics.jsonl``, as ``scratchvit.train --out`` writes) or
a ``metrics.jsonl`` file itself. Rows are JSON objects with ``step``, ``split`` ("train", "val" or
"test"), ``loss`` and, for val/test, ``accuracy``. The figure has two panels, loss and accuracy
(in %) against the training step; training rows are solid lines, validation dashed, test a marker;
one colour per run, named in the legend (the run folder's name) and in the title. Needs
matplotlib (``pip install -e ".[plot]"``): without it, one line on stderr and exit code 2, as for
a missing or malformed metrics file. The PNG is written atomically (temporary file, then rename).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .checks import InputError
from .files import write_atomic
from .settings import PlotSettings, parse_settings

SPLITS = ("train", "val", "test")


def metrics_path(run) -> Path:
    """``run`` itself if it is a file, else ``run/metrics.jsonl``."""
    run = Path(run)
    return run if run.is_file() else run / "metrics.jsonl"


def read_metrics(path) -> dict[str, dict[str, list]]:
    """Rows of a ``metrics.jsonl`` grouped by split: {split: {"step": [...], "loss": [...], "accuracy": [...]}}.

    ``accuracy`` holds None where a row has none (training rows).

    Raises:
        InputError: missing file, a line that is not a JSON object with ``step``, ``split`` and
            ``loss`` (naming the file and line number), or no rows at all.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"cannot read {str(path)!r}: {e.strerror or e}") from e
    out = {s: {"step": [], "loss": [], "accuracy": []} for s in SPLITS}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            split, step, loss = row["split"], float(row["step"]), float(row["loss"])
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}:{n}: not a metrics row with step, split and loss ({e})") from e
        if split not in out:
            raise InputError(f"{path}:{n}: unknown split {split!r}, expected one of {SPLITS}")
        out[split]["step"].append(step)
        out[split]["loss"].append(loss)
        out[split]["accuracy"].append(row.get("accuracy"))
    if not any(out[s]["step"] for s in SPLITS):
        raise InputError(f"{path}: no metrics rows")
    return out


def _import_pyplot():
    try:
        import matplotlib  # noqa: PLC0415  (an optional extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415  (matplotlib is the optional [plot] extra)
    except ImportError as e:
        raise InputError('matplotlib is needed for plots: pip install -e ".[plot]" (or pip install matplotlib)') from e
    return plt


SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}
STEP_LABEL = "training step (optimiser updates)"
LOSS_LABEL = "loss (cross-entropy, nats per image)"
ACCURACY_LABEL = "accuracy (% of images)"


def figure(runs: dict[str, dict]):
    """The matplotlib Figure of the curves: loss and accuracy against the training step for every run.

    Args:
        runs: run label -> :func:`read_metrics` result; the label names the run in the legends and title.

    Returns:
        a Figure with two Axes, loss and accuracy, their axes labelled with units and a legend whose
        entries read "<run> training", "<run> validation", "<run> test". The caller closes it.

    Raises:
        InputError: matplotlib is missing.
    """
    plt = _import_pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for i, (label, m) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        for split, style in (("train", "-"), ("val", "--"), ("test", "o")):
            d = m[split]
            if not d["step"]:
                continue
            name = f"{label} {SPLIT_NAMES[split]}"
            ax_loss.plot(d["step"], d["loss"], style, color=colour, label=name)
            acc = [(s, 100 * a) for s, a in zip(d["step"], d["accuracy"], strict=True) if a is not None]
            if acc:
                ax_acc.plot(*zip(*acc, strict=True), style, color=colour, label=name)
    ax_loss.set(xlabel=STEP_LABEL, ylabel=LOSS_LABEL, title="loss")
    ax_acc.set(xlabel=STEP_LABEL, ylabel=ACCURACY_LABEL, title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle("training curves: " + ", ".join(runs), fontsize=10)
    fig.tight_layout()
    return fig


def plot_runs(runs: dict[str, dict], out) -> None:
    """Draw loss and accuracy against step for every run (:func:`figure`) into the PNG ``out``, atomically.

    Args:
        runs: run label -> :func:`read_metrics` result.
        out: destination path ending in ".png".

    Raises:
        InputError: matplotlib is missing.
    """
    fig = figure(runs)
    try:
        write_atomic(out, lambda f: fig.savefig(f, format="png"))
    finally:
        _import_pyplot().close(fig)


def main(argv=None) -> int:
    """``python -m scratchvit.plot RUN [RUN ...] [--out PNG]``: loss and accuracy against step of one or more
    runs in one PNG. Returns the exit status: 0, or 2 with a one-line message on stderr for an unreadable
    metrics file or a missing output folder (argparse exits 2 on a bad argument)."""
    args = parse_settings(PlotSettings, argv, "python -m scratchvit.plot", __doc__.split("\n\n")[0])
    first = metrics_path(args.runs[0])
    out = Path(args.out) if args.out else first.parent / "curves.png"
    try:
        runs = {}
        for r in args.runs:
            path = metrics_path(r)
            label = path.parent.name if path.name == "metrics.jsonl" else path.stem
            while label in runs:
                label += "'"
            runs[label] = read_metrics(path)
        if not out.parent.is_dir():
            raise InputError(f"folder of --out does not exist: {str(out.parent)!r}")
        plot_runs(runs, out)
    except InputError as e:
        print(f"plot: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
