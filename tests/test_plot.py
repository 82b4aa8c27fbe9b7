"""python -m scratchvit.plot: a PNG of the curves, a clear error without matplotlib or with bad files."""
import json

import numpy as np
import pytest
from PIL import Image

from scratchvit import plot


def write_metrics(folder, steps=(100, 200, 300)):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, s in enumerate(steps):
        rows.append({"step": s, "split": "train", "loss": 2.0 / (i + 1), "lr": 1e-3})
        rows.append({"step": s, "split": "val", "loss": 2.2 / (i + 1), "accuracy": 0.3 + 0.2 * i, "lr": 1e-3})
    rows.append({"step": steps[-1], "split": "test", "loss": 0.9, "accuracy": 0.71})
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def test_writes_a_png_for_several_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a, b = write_metrics(tmp_path / "runA"), write_metrics(tmp_path / "runB", steps=(50, 150))
    out = tmp_path / "curves.png"
    assert plot.main([str(a), str(b / "metrics.jsonl"), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (1000, 400)
        colours = len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0))
    assert colours > 20  # something was drawn, not a blank canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "runA", "runB"]


def test_figure_names_its_runs_and_labels_its_axes_with_units(tmp_path):
    pytest.importorskip("matplotlib")
    runs = {name: plot.read_metrics(write_metrics(tmp_path / name) / "metrics.jsonl") for name in ("runA", "runB")}
    fig = plot.figure(runs)
    try:
        loss, acc = fig.axes[:2]
        assert loss.get_xlabel() == acc.get_xlabel() == "training step (optimiser updates)"
        assert loss.get_ylabel() == "loss (cross-entropy, nats per image)"
        assert acc.get_ylabel() == "accuracy (% of images)"
        assert (loss.get_title(), acc.get_title()) == ("loss", "accuracy")
        assert fig._suptitle.get_text() == "training curves: runA, runB"
        for ax, splits in ((loss, ("training", "validation", "test")), (acc, ("validation", "test"))):
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
            assert legend == [f"{run} {split}" for run in ("runA", "runB") for split in splits]
        assert max(acc.lines[0].get_ydata()) == pytest.approx(70)  # accuracy drawn in %, not as a fraction
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_default_output_is_next_to_the_first_run(tmp_path):
    pytest.importorskip("matplotlib")
    run = write_metrics(tmp_path / "run")
    assert plot.main([str(run)]) == 0
    assert (run / "curves.png").stat().st_size > 1000


def test_read_metrics_groups_rows_by_split(tmp_path):
    m = plot.read_metrics(write_metrics(tmp_path / "r") / "metrics.jsonl")
    assert m["train"]["step"] == [100, 200, 300] and m["train"]["accuracy"] == [None] * 3
    assert m["val"]["accuracy"] == pytest.approx([0.3, 0.5, 0.7]) and m["test"]["loss"] == [0.9]


def test_missing_matplotlib_is_one_line_and_exit_2(tmp_path, no_matplotlib, capsys):
    run = write_metrics(tmp_path / "run")
    assert plot.main([str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install" in err[0] and "matplotlib" in err[0]
    assert not (run / "curves.png").exists()


@pytest.mark.parametrize("content,want", [(None, "cannot read"), ("", "no metrics rows"),
                                          ('{"step": 1, "split": "train", "loss": 1}\n{oops\n', "metrics.jsonl:2"),
                                          ('{"step": 1, "split": "dev", "loss": 1}\n', "unknown split")])
def test_bad_metrics_files(tmp_path, capsys, content, want):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    assert plot.main([str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plot: error: ") and want in err[0]
    assert not (run / "curves.png").exists()
