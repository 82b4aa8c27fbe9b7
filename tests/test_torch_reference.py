"""The PyTorch reference ViT (bench/torch_reference.py) against the official vit_jax model.

The reference cases in ``tests/reference/*.npz`` were computed with Google's vit_jax in float64
(``tests/reference/make_reference.py``). The PyTorch model built from the same
parameters must reproduce logits, loss and every gradient tightly, so that the
benchmarks compare scratchvit with a model known to compute the same function.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bench import torch_reference as tr  # noqa: E402  (after the PyTorch skip)

REF = Path(__file__).resolve().parent / "reference"  # see its README and make_reference.py

CASES = ["shared_token", "shared_prelogits", "shared_hybrid_stem", "shared_hybrid_stages"]


def _load(name):
    path = REF / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"reference case {path} not found (tests/reference/ holds copies of the official cases)")
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    params = {k[len("params/"):]: v for k, v in data.items() if k.startswith("params/")}
    grads = {k[len("grads/"):]: v for k, v in data.items() if k.startswith("grads/")}
    meta = json.loads(str(data["meta"]))
    return params, grads, data, meta


@pytest.mark.parametrize("case", CASES)
def test_matches_official_float64(case):
    params, ref_grads, data, meta = _load(case)
    model = tr.build_torch_vit(params, classifier=meta["classifier"], gelu="tanh", dtype=torch.float64)

    g = model.geometry
    assert g["image_size"] == meta["image"] and g["patch_size"] == meta["patch"]
    assert g["hidden_size"] == meta["hidden"] and g["num_heads"] == meta["heads"]
    assert g["num_layers"] == meta["layers"] and g["mlp_dim"] == meta["mlp"]
    assert g["num_classes"] == meta["classes"] and g["representation_size"] == meta["representation_size"]

    with torch.no_grad():
        logits = model(torch.from_numpy(data["images"])).numpy()
    np.testing.assert_allclose(logits, data["logits"], rtol=0, atol=1e-10)

    loss, grads = tr.loss_and_grads(model, data["images"], data["labels"])
    assert abs(loss - float(data["loss"])) <= 1e-10

    assert set(grads) == set(ref_grads)
    # The key bias adds q.b_k to every score of a query row, which softmax ignores: its true
    # gradient is exactly zero and the reference holds only rounding noise (~1e-17). A tensor's
    # own max |grad| is a meaningless scale there, so the scale is floored at 1e-6 of the
    # largest gradient of the case; every other tensor is measured against its own max.
    floor = 1e-6 * max(np.abs(r).max() for r in ref_grads.values())
    for name, ref in ref_grads.items():
        got = grads[name]
        assert got.shape == ref.shape, name
        scale = max(np.abs(ref).max(), floor)
        err = np.abs(got - ref).max() / scale
        assert err <= 1e-9, f"{name}: max error {err:.3e} relative to max |grad| {scale:.3e}"
        if name.endswith("key/bias"):
            assert np.abs(got).max() <= 1e-14, name


@pytest.mark.parametrize("case", CASES)
def test_params_round_trip(case):
    params, _, _, meta = _load(case)
    model = tr.build_torch_vit(params, dtype=torch.float64)
    back = tr.torch_params_to_numpy(model)
    assert set(back) == set(params)
    for name, v in params.items():
        assert back[name].shape == v.shape, name
        np.testing.assert_array_equal(back[name], v, err_msg=name)


def test_sdpa_and_linen_names_agree():
    params, _, data, _ = _load("shared_token")
    explicit = tr.build_torch_vit(params, dtype=torch.float64)
    linen = {
        k.replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
        .replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0"): v
        for k, v in params.items()
    }
    fused = tr.build_torch_vit(linen, dtype=torch.float64, sdpa=True)
    x = torch.from_numpy(data["images"])
    with torch.no_grad():
        np.testing.assert_allclose(fused(x).numpy(), explicit(x).numpy(), rtol=0, atol=1e-12)


def test_block_order_is_numeric():
    """With 11+ blocks, encoderblock_10 must come after encoderblock_9 (not after _1)."""
    params, _, data, _ = _load("shared_token")
    rng = np.random.default_rng(0)
    deep = {k: v for k, v in params.items() if "encoderblock_" not in k}
    order = rng.permutation(12)
    for i in range(12):
        src = i % 2
        for k, v in params.items():
            if k.startswith(f"Transformer/encoderblock_{src}/"):
                deep[k.replace(f"encoderblock_{src}/", f"encoderblock_{i}/")] = v * (1 + 0.1 * i)
    # Insert keys in a scrambled order: construction must not depend on dict order.
    deep = dict(sorted(deep.items(), key=lambda kv: (order[int(kv[0].split("encoderblock_")[1].split("/")[0])]
                                                     if "encoderblock_" in kv[0] else -1, kv[0])))
    model = tr.build_torch_vit(deep, dtype=torch.float64)
    assert model.geometry["num_layers"] == 12
    w10 = model.blocks[10].mlp.fc1.weight.detach().numpy()
    np.testing.assert_array_equal(w10, deep["Transformer/encoderblock_10/MlpBlock_3/Dense_0/kernel"].T)


def test_gap_and_erf_shapes():
    params, _, data, _ = _load("shared_token")
    gap = {k: v for k, v in params.items() if k != "cls"}
    gap["Transformer/posembed_input/pos_embedding"] = params["Transformer/posembed_input/pos_embedding"][:, 1:]
    model = tr.build_torch_vit(gap, classifier="gap", gelu="erf", dtype=torch.float64)
    assert model.classifier == "gap" and model.geometry["image_size"] == 32
    loss, grads = tr.loss_and_grads(model, data["images"], data["labels"])
    assert np.isfinite(loss) and set(grads) == set(gap)
    with pytest.raises(ValueError, match="cls"):
        tr.build_torch_vit(gap, classifier="token")
    with pytest.raises(ValueError, match="classifier"):
        tr.build_torch_vit(params, classifier="mean")


# ------------------------------------------------------------------ the benchmark scripts (smoke, no timing asserts)
TINY = ["--image-size", "16", "--patch-size", "4", "--hidden-size", "16", "--num-layers", "2", "--num-heads", "2",
        "--mlp-dim", "32", "--num-classes", "3"]


def test_train_step_script_smoke(tmp_path):
    from bench import train_step

    out = tmp_path / "r.json"
    res = train_step.main(TINY + ["--batch-size", "4", "--rounds", "2", "--steps", "1", "--warmup", "0",
                                  "--compare", "torch", "--mode", "cli", "--no-torch-compile", "--pause", "0",
                                  "--parts", "--json", str(out)])
    assert json.loads(out.read_text())["frameworks"].keys() == res["frameworks"].keys() == {"scratchvit", "pytorch"}
    agree = res["agreement"]
    assert agree["logits_max_abs_diff"] <= 1e-4 * max(1.0, agree["logits_max_abs"])
    assert agree["grads_max_rel_diff"] <= 1e-3
    assert len(res["ratio_over_pytorch"]["rounds"]) == 2
    for fw in res["frameworks"].values():
        assert fw["images_per_s"] > 0 and fw["step"]["n"] == 2 and set(fw["parts"]) >= {"forward", "backward"}


def test_train_step_runs_plain_and_cli_processes():
    """--mode both: one fresh process per mode; the plain one imported NumPy before scratchvit."""
    from bench import train_step

    res = train_step.main(TINY + ["--batch-size", "4", "--rounds", "1", "--steps", "1", "--warmup", "0",
                                  "--mode", "both", "--pause", "0"])
    assert set(res["modes"]) == {"plain", "cli"}
    for mode, r in res["modes"].items():
        assert r["process"]["mode"] == mode and r["frameworks"]["scratchvit"]["images_per_s"] > 0, r
        assert r["process"]["cpu_settings"]["malloc"] in (True, False)
    assert res["modes"]["cli"]["process"]["cpu_settings"]["openblas_thread_timeout"] is True
    assert res["modes"]["plain"]["process"]["cpu_settings"]["openblas_thread_timeout"] is False


def test_scaling_script_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    from bench import scaling

    res = scaling.main(TINY + ["--batch-sizes", "2", "4", "--image-sizes", "8", "16", "--batch-size", "2",
                               "--steps", "1", "--warmup", "0", "--pause", "0", "--out-dir", str(tmp_path)])
    assert len(res["sweeps"]["batch"]) == 2 and len(res["sweeps"]["image"]) == 2
    assert (tmp_path / "scaling.png").exists() and list(tmp_path.glob("scaling_*.json"))


def test_elementwise_ops_script_compares_equal_work(tmp_path):
    """bench/elementwise_ops.py times the same function in both libraries: outputs and input
    gradients of layer norm, GELU and softmax agree, and the script writes its JSON."""
    from bench import elementwise_ops as eo

    rng = np.random.default_rng(1)
    for op, shape in (("layer norm", (40, 24)), ("GELU", (40, 48)), ("softmax", (6, 9, 9))):
        x, dy = rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32)
        ours, theirs = eo.op_pair(op, x, dy)
        (y0, dx0), (y1, dx1) = ours(), theirs()
        np.testing.assert_allclose(y0, y1, rtol=1e-4, atol=1e-5, err_msg=op)
        np.testing.assert_allclose(dx0, dx1, rtol=1e-4, atol=1e-4, err_msg=op)
    out = tmp_path / "eo.json"
    assert eo.main(["--repeats", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {(r["geometry"], r["op"]) for r in rows} == {(g, o) for g in eo.SUITE_GEOMETRIES
                                                        for o in ("layer norm", "GELU", "softmax")}
    assert all(r["scratchvit_us"] > 0 and r["torch_us"] > 0 for r in rows)


def test_op_profile_accounts_for_the_step():
    """bench/op_profile.py: every op of the model is timed, and the ops' times fit inside the step's."""
    import scratchvit as sv
    from bench import op_profile

    cfg = sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, hidden_size=16, num_layers=1, num_heads=2,
                        mlp_dim=32, num_classes=3)
    total, spent = op_profile.profile(cfg, batch=4, repeats=2)
    for op in ("patch_embedding", "layer_norm", "attention", "dense", "gelu"):
        assert spent[f"{op}_forward"] > 0 and spent[f"{op}_backward"] > 0, op
    assert 0 < sum(spent.values()) <= total
    from scratchvit import ops
    assert ops.dense_forward.__module__ == "scratchvit.ops.dense"  # the timers are removed afterwards
