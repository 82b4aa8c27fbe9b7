"""fp16 mixed precision (scratchvit/step.py, --precision fp16): float32 masters, float16 forward and backward,
dynamic loss scaling. It runs on NumPy (the plain forms take float16), so it is tested here. Not on the strict
device: the array API standard has no float16, and array-api-strict refuses it."""
import numpy as np
import pytest
from test_train import fmnist_dir  # noqa: F401  (fixture: a small Fashion-MNIST in IDX files)

import scratchvit as sv
from scratchvit import optim, step


def tiny_config(classes=10, image=28, patch=7):
    return sv.get_config("ViT-Ti_16", image_size=image, patch_size=patch, hidden_size=16, num_heads=2, num_layers=1,
                         mlp_dim=32, num_classes=classes)


def fashion_mnist_subset(n_train):
    from scratchvit.data import load_dataset

    try:
        ds = load_dataset("fashion-mnist", download=False)
    except (FileNotFoundError, ValueError, OSError) as e:
        pytest.skip(f"Fashion-MNIST is not on this machine (apt-get install dataset-fashion-mnist): {e}")
    x = ds.train_images[:n_train].astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    x = np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
    return (x - 127.5) / 127.5, ds.train_labels[:n_train].astype(np.int64)


def train(precision, images, labels, steps, batch, device="cpu"):
    model = sv.ViT(tiny_config(), seed=0, device=device)
    opt = optim.make_optimizer("adamw")
    state = opt.init(model.flat)
    scale = step.LossScale() if precision == "fp16" else None
    losses = []
    for i in range(steps):
        lo = (i * batch) % (len(labels) - batch + 1)
        r = step.train_step(model, opt, state, images[lo:lo + batch], labels[lo:lo + batch],
                            optim.learning_rate(i, 3e-3, steps, 20), precision=precision, loss_scale=scale, step=i)
        losses.append(r.loss)
    return model, losses, scale


def test_float16_matrix_products_accumulate_in_float32(rng):
    """The plain forms' matrix product on float16 NumPy arrays: float16 inputs, products summed in float32 and
    rounded to float16 once (a GPU's float16 GEMM), through BLAS; float32 inputs are NumPy's own product."""
    from scratchvit.ops.common import matmul
    from scratchvit.ops.dense import dense_forward

    a, b = rng.normal(size=(3, 5, 64)).astype(np.float16), rng.normal(size=(64, 7)).astype(np.float16)
    c = matmul(a, b)
    assert c.dtype == np.float16
    np.testing.assert_array_equal(c, (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float16))
    np.testing.assert_allclose(c, a.astype(np.float64) @ b.astype(np.float64), rtol=2.0**-10, atol=1e-6)
    ones = np.ones((1, 4096), np.float16)
    assert matmul(ones, ones.T)[0, 0] == 4096  # a float16 running sum would stop at 2048 (2048 + 1 = 2048)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_array_equal(matmul(a32, b32), np.matmul(a32, b32))
    x, kernel, bias = a[0], b, rng.normal(size=7).astype(np.float16)  # the dense layer's fp16 form uses it
    np.testing.assert_array_equal(dense_forward(x, kernel, bias)[0], matmul(x, kernel) + bias)


def test_fp16_follows_fp32_on_fashion_mnist():
    """300 steps on a Fashion-MNIST subset: the fp16 loss curve ends within 3% of the fp32 one (mean of the last
    30 steps), the masters stay float32, and the loss went down (so the comparison means something)."""
    images, labels = fashion_mnist_subset(4800)
    _, loss32, _ = train("fp32", images, labels, 300, 32)
    model16, loss16, scale = train("fp16", images, labels, 300, 32)
    end32, end16 = np.mean(loss32[-30:]), np.mean(loss16[-30:])
    assert end32 < 0.6 * np.mean(loss32[:10])
    assert abs(end16 - end32) <= 0.03 * end32, (end16, end32, scale)
    assert all(v.dtype == np.float32 for v in model16.params.values())
    assert scale.skipped < 10


def test_an_injected_overflow_skips_exactly_that_step(rng, monkeypatch):
    device = "cpu"
    images, labels = rng.uniform(-1, 1, (8, 28, 28, 3)).astype(np.float32), rng.integers(0, 10, 8)
    model = sv.ViT(tiny_config(), seed=0, device=device)
    opt = optim.make_optimizer("sgd")
    state = opt.init(model.flat)
    scale = step.LossScale(scale=1024.0)
    real, inject = sv.ViT.part_loss_and_grads, {"on": False}

    def overflow_when_asked(self, *a, **k):
        loss, grads = real(self, *a, **k)
        assert grads["head/bias"].dtype == model.xp.float16  # the compute copy runs in float16
        if inject["on"]:
            grads["head/bias"] = grads["head/bias"] + float("inf")
        return loss, grads

    monkeypatch.setattr(sv.ViT, "part_loss_and_grads", overflow_when_asked)
    snapshots, results = [], []
    for i in range(4):
        inject["on"] = i == 2
        snapshots.append({k: sv.backend.to_numpy(v).copy() for k, v in model.params.items()})
        results.append(step.train_step(model, opt, state, images, labels, 0.1, precision="fp16", loss_scale=scale,
                                       step=i))
    after = {k: sv.backend.to_numpy(v) for k, v in model.params.items()}
    assert [r.skipped for r in results] == [False, False, True, False]
    assert scale.scale == 512.0 and scale.skipped == 1 and scale.clean_steps == 1
    for k in after:  # step 2 changed nothing; steps 1 and 3 changed the head
        np.testing.assert_array_equal(snapshots[3][k], snapshots[2][k])
    assert not np.array_equal(snapshots[2]["head/kernel"], snapshots[1]["head/kernel"])
    assert not np.array_equal(after["head/kernel"], snapshots[3]["head/kernel"])


def test_fp16_needs_float32_masters_and_a_loss_scale(rng):
    model = sv.ViT(tiny_config(), seed=0)
    opt = optim.make_optimizer("sgd")
    with pytest.raises(ValueError, match="fp16 needs a LossScale"):
        step.train_step(model, opt, opt.init(model.flat), np.zeros((2, 28, 28, 3)), np.array([0, 1]), 0.1,
                        precision="fp16")
    from scratchvit.settings import TrainSettings

    with pytest.raises(ValueError, match="needs --dtype float32"):
        TrainSettings(precision="fp16", dtype="float64")


def test_fp16_cli_records_skips_and_resumes_the_scale(fmnist_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    """--precision fp16 end to end: the first lines say what fp16 on the CPU is for; metrics.jsonl counts skipped
    steps and gives the scale; the checkpoint stays float32 in the official layout; state.npz holds the scale
    and --resume restores it."""
    import json

    from test_train import interrupt_on_call, run

    from scratchvit import train

    out, args = tmp_path / "fp16", ("--precision", "fp16", "--optimizer", "adamw", "--lr", "0.003", "--steps", "8")
    real = step.train_step
    with monkeypatch.context() as m:
        interrupt_on_call(m, train, "train_step", 6)
        assert run(fmnist_dir, out, *args) == 130
    assert train.FP16_ON_CPU in capsys.readouterr().out.splitlines()[:2]
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["split"] == "train"]
    assert trains and all(r["skipped_steps"] >= 0 and r["loss_scale"] > 0 for r in trains)
    with np.load(out / "last.npz") as z:
        assert all(z[k].dtype == np.float32 for k in z.files)
    with np.load(out / "state.npz") as z:
        saved = {k: z[k] for k in z.files}
    assert int(saved["step"]) == 5 and float(saved["loss_scale/scale"]) > 0
    saved["loss_scale/scale"] = np.float64(256.0)
    np.savez(out / "state.npz", **saved)
    seen = []

    def spy(*a, **k):
        seen.append(k["loss_scale"].scale)
        return real(*a, **k)

    monkeypatch.setattr(train, "train_step", spy)
    assert train.main(["--out", str(out), "--resume", "--no-progress"]) == 0
    assert len(seen) == 3 and seen[0] == 256.0
