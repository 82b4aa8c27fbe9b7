"""--time-limit (the step count fitted to a wall-clock budget) and --tta flip (flip-averaged test logits)."""
import json

import numpy as np
import pytest
from test_train import fmnist_dir, interrupt_on_call, metrics  # noqa: F401  (fmnist_dir: the fixture of a small Fashion-MNIST)

import scratchvit as sv
from scratchvit import accumulate, evaluate, settings, train

FAST = ["--config", "fashion-mnist-vit",
        "--model", "ViT-Ti_16", "--image-size", "16", "--patch-size", "8", "--hidden-size", "16", "--num-layers",
        "1", "--num-heads", "2", "--mlp-dim", "32", "--batch-size", "16", "--augment", "none", "--eval-batch-size",
        "64", "--no-progress", "--workers", "1", "--eval-every", "40", "--warmup-steps", "12"]


def run(data_dir, out, *extra):
    return train.main(["--dataset", "fashion-mnist", "--data-dir", str(data_dir), "--out", str(out), *FAST, *extra])


@pytest.mark.parametrize("left,step_s,image_s,n_val,n_test,every,step", [
    (600.0, 0.8, 0.002, 1200, 10000, 500, 30), (10.0, 0.01, 0.001, 50, 100, 7, 12), (5.0, 1.0, 0.0, 10, 10, 1, 3),
    (0.5, 1.0, 0.01, 10, 10, 5, 12)])
def test_fit_steps_takes_the_most_steps_that_fit(left, step_s, image_s, n_val, n_test, every, step):
    def cost(n):  # written out: steps, a validation pass at every multiple of `every` and at the end, the test
        passes = len({k for k in range(step + 1, n + 1) if k % every == 0} | {n}) if n > step else 0
        return (n - step) * step_s + (passes * n_val + n_test) * image_s

    n = train.fit_steps(left, step_s, image_s, n_val, n_test, every, step)
    assert n >= step and cost(n + 1) > left
    assert n == step or cost(n) <= left


def test_a_time_limited_run_records_its_count_resumes_with_it_and_reruns_exactly(fmnist_dir, tmp_path,  # noqa: F811
                                                                                  monkeypatch, capsys):
    """The calibration steps are the run's own warmup steps, so --steps N (N the count it chose) is the same run,
    and a run stopped after the count was set resumes with that count."""
    with monkeypatch.context() as m:
        interrupt_on_call(m, accumulate, "flat_loss_and_grads", 16)  # after the 12 calibration steps
        assert run(fmnist_dir, tmp_path / "limited", "--time-limit", "0.05") == 130
    out = capsys.readouterr().out
    assert "x the steps that fit in --time-limit 0.05 min (counted after the first 12 steps)" in out
    cfg = json.loads((tmp_path / "limited" / "config.json").read_text())
    total, rec = cfg["total_steps"], cfg["time_limit"]
    assert total > 15 and rec["total_steps"] == total and rec["minutes"] == 0.05 and rec["measured_steps"] == [3, 12]
    assert rec["step_seconds"] > 0 and rec["eval_seconds_per_image"] > 0
    assert "s a step (steps 4-12)" in out and f"-> {total} steps; --steps {total} reruns this run exactly" in out
    assert train.main(["--out", str(tmp_path / "limited"), "--resume", "--no-progress"]) == 0
    assert f"resuming {tmp_path / 'limited'} at step 15 of {total}" in capsys.readouterr().out

    assert run(fmnist_dir, tmp_path / "counted", "--steps", str(total)) == 0
    with np.load(tmp_path / "limited" / "last.npz") as a, np.load(tmp_path / "counted" / "last.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [r["step"] for r in metrics(tmp_path / "limited")] == [r["step"] for r in metrics(tmp_path / "counted")]


def test_a_run_stopped_in_its_calibration_calibrates_again(fmnist_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    with monkeypatch.context() as m:
        interrupt_on_call(m, accumulate, "flat_loss_and_grads", 5)
        assert run(fmnist_dir, tmp_path / "r", "--time-limit", "0.03") == 130
    assert json.loads((tmp_path / "r" / "config.json").read_text())["total_steps"] is None
    assert train.main(["--out", str(tmp_path / "r"), "--resume", "--no-progress"]) == 0
    assert "at step 4 of the steps that fit (counted again: it stopped in its calibration)" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())  # timed from step 4 + 8 // 4 to the warmup's end
    assert cfg["time_limit"]["measured_steps"] == [6, 12] and cfg["total_steps"] == metrics(tmp_path / "r")[-1]["step"]


def test_time_limit_settings():
    s, _ = settings.resolve_settings(["--config", "fashion-mnist", "--time-limit", "10"])
    assert (s.time_limit, s.epochs) == (10, None)  # the command line's length beats the preset's epochs
    with pytest.raises(ValueError, match="--time-limit and --steps both set the length of the run"):
        settings.resolve_settings(["--config", "fashion-mnist", "--time-limit", "10", "--steps", "50"])
    with pytest.raises(ValueError, match="--time-limit 10 and --epochs 3 both set the length"):
        settings.TrainSettings(time_limit=10, epochs=3)
    with pytest.raises(ValueError, match="it needs --warmup-steps >= 10"):
        settings.TrainSettings(time_limit=10, warmup_steps=5)
    with pytest.raises(ValueError, match="--time-limit must be positive"):
        settings.TrainSettings(time_limit=0)


def test_time_limit_preset_gives_way_to_a_command_line_length(tmp_path):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"dataset": "fashion-mnist", "time_limit": 10, "warmup_steps": 20}))
    s, _ = settings.resolve_settings(["--config", str(preset), "--epochs", "2"])
    assert (s.time_limit, s.epochs) == (None, 2)
    s, _ = settings.resolve_settings(["--config", str(preset), "--steps", "40"])
    assert (s.time_limit, s.steps) == (None, 40)
    assert settings.resolve_settings(["--config", str(preset)])[0].time_limit == 10


def test_too_short_a_limit_names_the_steps_that_fit(fmnist_dir, tmp_path, capsys):  # noqa: F811
    assert run(fmnist_dir, tmp_path / "r", "--time-limit", "0.0001") == 2
    err = capsys.readouterr().err
    assert "--time-limit 0.0001 min: at" in err and "not more than --warmup-steps 12" in err


def test_flip_averaged_evaluation(rng):
    config = sv.get_config("ViT-Ti_16", image_size=8, patch_size=4, hidden_size=16, num_heads=2, num_layers=1,
                           mlp_dim=16, num_classes=3, classifier="gap")
    model = sv.ViT(config, seed=0, dtype="float64")
    for k in model.params:
        model.params[k] += rng.standard_normal(model.params[k].shape) * 0.3
    images, labels = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, 20)
    r = evaluate.evaluate(model, images, labels, batch_size=8, workers=1, tta="flip")
    x = ((images - 127.5) / 127.5).astype(np.float32)  # as Batches prepares them
    plain, mirrored = model.forward(x), model.forward(x[:, :, ::-1])
    avg = 0.5 * (plain + mirrored)
    np.testing.assert_array_equal(r["predictions"], plain.argmax(1))
    np.testing.assert_array_equal(r["predictions_flip"], avg.argmax(1))
    assert r["accuracy_flip"] == pytest.approx((avg.argmax(1) == labels).mean())
    z = avg - avg.max(1, keepdims=True)
    nll = -(z[np.arange(20), labels] - np.log(np.exp(z).sum(1)))
    assert r["loss_flip"] == pytest.approx(nll.mean(), rel=1e-12)
    assert r["accuracy"] == evaluate.evaluate(model, images, labels, batch_size=8, workers=1)["accuracy"]
    with pytest.raises(ValueError, match="tta must be None or one of"):
        evaluate.evaluate(model, images, labels, tta="crop")


def test_train_and_evaluate_report_the_flip_figure_beside_the_plain_one(fmnist_dir, tmp_path, capsys):  # noqa: F811
    assert run(fmnist_dir, tmp_path / "r", "--steps", "20", "--tta", "flip") == 0
    test = metrics(tmp_path / "r")[-1]
    assert test["split"] == "test" and {"accuracy", "loss", "accuracy_flip", "loss_flip"} <= set(test)
    assert "with flip averaging)" in capsys.readouterr().out
    js = tmp_path / "e.json"
    assert evaluate.main(["--checkpoint", str(tmp_path / "r" / "last.npz"), "--dataset", "fashion-mnist",
                          "--data-dir", str(fmnist_dir), "--tta", "flip", "--json", str(js)]) == 0
    assert "flip-averaged logits; plain: accuracy" in capsys.readouterr().out
    e = json.loads(js.read_text())
    assert e["tta"] == "flip" and e["accuracy"] == pytest.approx(test["accuracy_flip"])
    assert e["plain_accuracy"] == pytest.approx(test["accuracy"])
