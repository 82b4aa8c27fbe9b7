"""The benchmark scripts of bench/ that no other test runs, each run once on the smallest settings it takes.

A benchmark that fails on its first line is found by its next user, a year later; these runs find it here
(bench/preset_step_time.py called ``opt.init(model.params)`` for a whole session after the optimisers moved
to the flat buffer). Timings are not asserted (they are the scripts' output, not a property of the code);
what each script computes besides them is: the parameter and token counts, the agreement with PyTorch, the
files written. The PyTorch ones skip without it (CI's second phase installs it).
"""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_preset_step_time_counts_and_ratios(capsys):
    from bench import preset_step_time

    medians = preset_step_time.main(["32,1,64,0.5", "--batch", "2", "--rounds", "2", "--steps", "1"])
    out = capsys.readouterr().out
    assert list(medians) == ["fashion-mnist-vit (ViT, patch 7)",
                             "hybrid root 32ch, patch 1, width 32, 1 blocks, mlp 64"]
    assert all(t > 0 for t in medians.values())
    # the ResNet root divides 28 px by 4 (stride-2 convolution, stride-2 max pool): 7 x 7 tokens of patch 1;
    # the ViT preset's patch 7 gives 4 x 4
    assert "552,458 params, 16 tokens" in out
    assert "width 32, 1 blocks, mlp 64" in out and ", 49 tokens" in out
    assert "(1.00x the ViT preset's)" in out


def test_preset_step_time_rejects_a_bad_candidate(capsys):
    from bench import preset_step_time

    with pytest.raises(SystemExit):
        preset_step_time.main(["64,3,128"])
    assert "'64,3,128' is not width,blocks,mlp,resnet_width" in capsys.readouterr().err


def test_update_pieces_runs_every_way(capsys):
    import scratchvit as sv
    from bench import update_pieces
    from scratchvit.flat import Layout

    assert update_pieces.main(["--models", "ViT-Ti_16", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # the flat buffer: ViT-Ti/16's 5,717,416 parameters (1000 classes) and the layout's alignment padding
    size = Layout.of(sv.param_shapes(sv.get_config("ViT-Ti_16", num_classes=1000))).size
    assert 5_717_416 <= size < 5_717_416 + 16 * 200
    assert len(lines) == 2 and lines[0].startswith(f"ViT-Ti_16 ({size:,} elements) sgd")
    assert lines[1].startswith(f"ViT-Ti_16 ({size:,} elements) adamw")
    for line in lines:
        assert "per parameter" in line and "one piece" in line and "in pieces" in line


def test_ab_compares_a_checkout_with_itself(capsys):
    from bench import ab

    assert ab.main([str(ROOT), str(ROOT), "--rounds", "2", "--steps", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["p4_d64_b128 round 1", "p4_d64_b128 round 2", "p4_d64_b128"]
    ratio = float(out[-1].split("median ")[1].split()[0])
    assert 0.2 < ratio < 5  # the same code: any ratio is noise; a broken child would have raised


def test_gemm_shapes_writes_every_product(tmp_path, capsys):
    pytest.importorskip("torch")
    from bench import gemm_shapes, harness

    out = tmp_path / "gemm.json"
    assert gemm_shapes.main(["--repeats", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {r["geometry"] for r in rows} == set(harness.SUITE_GEOMETRIES)
    assert len(rows) == 6 * len(harness.SUITE_GEOMETRIES)
    assert all(r["numpy_gflops"] > 0 and r["torch_gflops"] > 0 for r in rows)


def test_hybrid_ops_agree_with_pytorch(tmp_path):
    pytest.importorskip("torch")
    from bench import hybrid_ops

    out = tmp_path / "hybrid.json"
    assert hybrid_ops.main(["--batch", "1", "--repeats", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {r["op"] for r in rows} == {"conv2d", "group_norm"}
    assert len(rows) == len(hybrid_ops.CONVS) + len(hybrid_ops.GROUP_NORMS)
    # float32 forward and backward of the same layer in two libraries: they agree to float32 rounding
    worst = max(r["max_rel_diff"] for r in rows)
    assert worst < 1e-4, [(r["layer"], r["max_rel_diff"]) for r in rows]


def test_scripts_run_from_the_command_line(tmp_path):
    """As the docstrings say (python bench/X.py), not only imported: the repository root goes on sys.path."""
    import subprocess

    r = subprocess.run([sys.executable, str(ROOT / "bench" / "preset_step_time.py"), "--help"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "WIDTH,BLOCKS,MLP,RESNET_WIDTH" in r.stdout
