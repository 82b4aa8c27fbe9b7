"""The training CLI end to end on tiny models and fixture datasets (no network, seconds each)."""
import dataclasses
import gzip
import json

import numpy as np
import pytest

import scratchvit as sv
from scratchvit import accumulate, evaluate, optim, settings, train
from scratchvit.data.idx import IDX_FILES

TINY = ["--config", "fashion-mnist-vit",
        "--model", "ViT-Ti_16", "--image-size", "16", "--patch-size", "8", "--hidden-size", "16", "--num-layers", "1",
        "--num-heads", "2", "--mlp-dim", "32", "--batch-size", "16", "--warmup-steps", "2", "--augment", "none",
        "--eval-every", "4", "--eval-batch-size", "64", "--no-progress", "--workers", "1"]


def idx(array):
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def learnable_images(labels, rng):
    """28x28 grey images whose class is written as a bright horizontal band: easy to learn."""
    x = rng.integers(0, 60, (len(labels), 28, 28))
    for i, c in enumerate(labels):
        x[i, 2 * c + 4:2 * c + 7] = 250
    return x


@pytest.fixture
def fmnist_dir(tmp_path, isolated_data):
    """A small Fashion-MNIST in the official IDX .gz format; no system copy, no network."""
    rng = np.random.default_rng(0)
    ytr, yte = rng.integers(0, 10, 400), rng.integers(0, 10, 100)
    d = tmp_path / "fmnist"
    d.mkdir()
    for stem, a in zip(IDX_FILES, (learnable_images(ytr, rng), ytr, learnable_images(yte, rng), yte), strict=True):
        (d / f"{stem}.gz").write_bytes(idx(a))
    return d


def run(fmnist_dir, out, *extra):
    return train.main(["--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--out", str(out), *TINY,
                       *extra])


def interrupt_on_call(monkeypatch, obj, name, n):
    """Make ``obj.name`` raise KeyboardInterrupt on its ``n``-th call, as Ctrl-C during that training step
    would (the loop then saves the state of the steps before it); other calls run the real function."""
    real, calls = getattr(obj, name), {"n": 0}

    def interrupting(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(obj, name, interrupting)


def assert_resume_is_bit_exact(args, tmp_path, monkeypatch, stop_at: int):
    """Train ``args`` (train.main's, without --out) straight into tmp_path/straight, and again into
    tmp_path/stopped with Ctrl-C at the ``stop_at``-th step, then --resume: last.npz equal bit for bit."""
    assert train.main([*args, "--out", str(tmp_path / "straight")]) == 0
    with monkeypatch.context() as m:
        interrupt_on_call(m, accumulate, "flat_loss_and_grads", stop_at)
        assert train.main([*args, "--out", str(tmp_path / "stopped")]) == 130
    assert train.main(["--out", str(tmp_path / "stopped"), "--resume", "--no-progress"]) == 0
    with np.load(tmp_path / "straight" / "last.npz") as a, np.load(tmp_path / "stopped" / "last.npz") as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def metrics(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_end_to_end(fmnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(fmnist_dir, out, "--optimizer", "adamw", "--lr", "0.01", "--steps", "24") == 0
    for f in ("config.json", "metrics.jsonl", "last.npz", "best.npz", "state.npz"):
        assert (out / f).exists(), f
    m = metrics(out)
    train_loss = [r["loss"] for r in m if r["split"] == "train"]
    assert train_loss[-1] < 0.7 * train_loss[0], train_loss  # it learns
    for r in m:
        assert {"step", "epoch", "split", "loss", "lr", "images_per_sec"} <= set(r)
    assert [r["split"] for r in m][-1] == "test" and "accuracy" in m[-1]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"]["optimizer"] == "adamw" and cfg["total_steps"] == 24
    model = sv.ViT.from_checkpoint(out / "best.npz")
    assert model.config.num_classes == 10 and model.config.image_size == 16
    assert "test accuracy" in capsys.readouterr().out


def test_no_config_runs_the_quickstart_preset_and_says_so_first(fmnist_dir, tmp_path, capsys):
    """Without --config, train runs the fashion-mnist preset (the Quickstart: a hybrid, --time-limit 10); its first
    line says so. Here 2 steps of batch 8 (flags on the command line beat the preset's length)."""
    out = tmp_path / "run"
    assert train.main(["--data-dir", str(fmnist_dir), "--out", str(out), "--steps", "2", "--batch-size", "8",
                       "--warmup-steps", "1", "--eval-every", "2", "--eval-batch-size", "50", "--no-progress",
                       "--workers", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("no --config given: running the fashion-mnist preset, the Quickstart")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"]["resnet"] == "root" and cfg["total_steps"] == 2 and cfg["settings"]["time_limit"] is None


def test_resume_is_bit_exact(fmnist_dir, tmp_path, monkeypatch):
    args = ("--optimizer", "sgd", "--lr", "0.05", "--steps", "10", "--accum-steps", "2", "--augment", "crop-flip")
    assert run(fmnist_dir, tmp_path / "straight", *args) == 0

    with monkeypatch.context() as m:
        interrupt_on_call(m, accumulate, "flat_loss_and_grads", 7)
        assert run(fmnist_dir, tmp_path / "stopped", *args) == 130
    with np.load(tmp_path / "stopped" / "state.npz") as st:
        assert int(st["step"]) == 6
    assert train.main(["--out", str(tmp_path / "stopped"), "--resume", "--no-progress"]) == 0

    with np.load(tmp_path / "straight" / "last.npz") as a, np.load(tmp_path / "stopped" / "last.npz") as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    steps = [(r["step"], r["split"]) for r in metrics(tmp_path / "stopped")]
    assert steps == [(r["step"], r["split"]) for r in metrics(tmp_path / "straight")]


def test_fine_tune_from_checkpoint_new_size_and_classes(fmnist_dir, tmp_path):
    base = sv.ViT(sv.get_config("ViT-Ti_16", image_size=8, patch_size=4, hidden_size=16, num_layers=1, num_heads=2,
                                mlp_dim=32, num_classes=7, representation_size=8), seed=0)
    sv.save_checkpoint(tmp_path / "pre.npz", base.params)
    out = tmp_path / "ft"
    assert train.main(["--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--out", str(out),
                       "--checkpoint", str(tmp_path / "pre.npz"), "--image-size", "16", "--steps", "4",
                       "--batch-size", "8", "--warmup-steps", "1", "--eval-every", "4", "--no-progress",
                       "--augment", "inception"]) == 0
    model = sv.ViT.from_checkpoint(out / "last.npz")
    assert model.config.num_classes == 10 and model.config.image_size == 16
    assert model.config.representation_size is None and model.config.patch_size == 4


def test_nan_loss_stops_with_the_step(fmnist_dir, tmp_path, capsys):
    code = run(fmnist_dir, tmp_path / "nan", "--optimizer", "sgd", "--lr", "1e30", "--grad-clip", "0",
               "--steps", "20", "--schedule", "constant")
    assert code == 3
    err = capsys.readouterr().err
    assert "at step" in err and ("last good checkpoint" in err or "no checkpoint was written" in err)


def test_lr_sweep_picks_the_best_rate(fmnist_dir, tmp_path):
    out = tmp_path / "sweep"
    assert run(fmnist_dir, out, "--optimizer", "adamw", "--lr-sweep", "0.00001,0.01", "--sweep-steps", "8",
               "--steps", "8") == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["lr"] for r in sweep["results"]] == [1e-5, 0.01]
    assert sweep["best_lr"] == 0.01
    assert json.loads((out / "config.json").read_text())["settings"]["lr"] == 0.01


def test_evaluate_cli(fmnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(fmnist_dir, out, "--optimizer", "adamw", "--lr", "0.01", "--steps", "8") == 0
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(out / "best.npz"), "--dataset", "fashion-mnist",
                          "--data-dir", str(fmnist_dir), "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "per-class accuracy" in text and "confusion matrix" in text and "Ankle boot" in text
    e = json.loads((tmp_path / "e.json").read_text())
    cm = np.array(e["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 100
    assert e["accuracy"] == pytest.approx(np.trace(cm) / 100)


def test_confusion_matrix_and_per_class_accuracy():
    cm = evaluate.confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_allclose(evaluate.per_class_accuracy(cm), [0.5, 1.0, 2 / 3])


# ------------------------------------------------------------------ bad input gives a clear error
@pytest.mark.parametrize("extra,msg", [
    (["--model", "ViT-Q_16"], "unknown model 'ViT-Q_16'"),
    (["--image-size", "20"], "not a multiple of patch_size"),
    (["--batch-size", "10", "--accum-steps", "3"], "not divisible by --accum-steps"),
    (["--seed", "-3"], "--seed"),
    (["--config", "no-such-preset"], "no preset of that name"),
])
def test_bad_settings(fmnist_dir, tmp_path, capsys, extra, msg):
    assert run(fmnist_dir, tmp_path / "bad", "--steps", "4", *extra) == 2
    assert msg in capsys.readouterr().err


def test_evaluate_cli_bad_input_is_one_line(tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(tmp_path / "none.npz"), "--dataset", "imagefolder",
                          "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "none.npz" in err and len(err.splitlines()) == 1


def test_missing_dataset_names_file_and_address(tmp_path, isolated_data, capsys):
    assert train.main(["--dataset", "cifar10", "--out", str(tmp_path / "o"), "--steps", "2", "--warmup-steps", "1",
                       "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cifar-10-python.tar.gz" in err and "https://www.cs.toronto.edu/" in err


def test_wrong_data_dir(tmp_path, capsys):
    assert train.main(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "nowhere"), "--steps", "2",
                       "--warmup-steps", "1", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_corrupt_archive(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCRATCHVIT_DATA", str(tmp_path / "cache"))
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    assert train.main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--steps", "2",
                       "--warmup-steps", "1", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "cifar-10-python.tar.gz" in capsys.readouterr().err


def test_gpu_without_cupy(tmp_path, capsys):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here; this checks the message on machines without it")
    except ImportError:
        pass
    assert train.main(["--device", "gpu", "--out", str(tmp_path / "o")]) == 2
    assert "needs CuPy" in capsys.readouterr().err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--device", "--dataset", "--data-dir", "--model", "--image-size", "--checkpoint", "--optimizer",
                 "--lr-sweep", "--steps", "--epochs", "--warmup-steps", "--batch-size", "--accum-steps",
                 "--grad-clip", "--weight-decay", "--eval-every", "--seed", "--dtype", "--out", "--resume",
                 "--config"):
        assert flag in text, flag


@pytest.mark.parametrize("preset", ["fashion-mnist", "cifar10-finetune"])
def test_presets_load_and_validate(preset):
    s, resume = settings.resolve_settings(["--config", preset])
    assert s.dataset in ("fashion-mnist", "cifar10") and not resume
    config = train.model_config(s, num_classes=10)
    assert config.image_size % config.patch_size == 0
    if preset == "cifar10-finetune":  # the paper's recipe, Appendix B.1.1
        assert (s.optimizer, s.lr, s.momentum, s.weight_decay, s.batch_size, s.grad_clip,
                s.warmup_steps, s.steps, s.schedule) == ("sgd", 0.03, 0.9, 0.0, 512, 1.0, 500, 10000, "cosine")


def test_no_config_is_the_fashion_mnist_preset():
    """`python -m scratchvit.train` with no --config is the Quickstart preset, flags on top as on any preset;
    the note (the run's first line) is given once for a new run, not for a named preset or a resume."""
    notes = []
    s, resume = settings.resolve_settings([], note=notes.append)
    assert s == settings.resolve_settings(["--config", "fashion-mnist"])[0] and not resume
    assert len(notes) == 1 and "fashion-mnist preset" in notes[0] and "cifar10-finetune" in notes[0]
    s, _ = settings.resolve_settings(["--device", "gpu", "--epochs", "2"], note=notes.append)
    assert (s.device, s.epochs, s.time_limit, s.dataset, s.hidden_size) == ("gpu", 2, None, "fashion-mnist", 64)
    assert len(notes) == 2
    settings.resolve_settings(["--config", "cifar10-finetune"], note=notes.append)
    assert len(notes) == 2
    assert settings.TrainSettings().optimizer == "sgd"  # the API's defaults: the base under every preset


def test_settings_groups_are_named(capsys):
    for f in dataclasses.fields(settings.TrainSettings):
        assert f.metadata["group"] in settings.GROUPS, f.name
    with pytest.raises(ValueError, match="unknown group 'optimiser'"):
        settings.setting(0, "optimiser", "a typo in a group's name")
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    assert all(f"{g}:" in text for g in settings.GROUPS)


def test_one_input_error_for_every_tool():
    from scratchvit import checks, inspect, plot, predict

    assert predict.InputError is plot.InputError is inspect.InputError is checks.InputError


def test_every_cli_offers_the_same_choices():
    """train, evaluate, predict, inspect and plot build their parsers from the settings dataclasses: a flag they
    share has the same choices and help, and the choices are the one tuple each (devices, datasets, GELU forms)."""
    from scratchvit.backend import DEVICES
    from scratchvit.data import AUGMENTS, DATASETS
    from scratchvit.ops.gelu import GELU_FORMS

    def actions(ap):
        return {a.dest: a for a in ap._actions}

    tr = actions(settings.build_parser())
    ev = actions(settings.cli_parser(settings.EvaluateSettings))
    pr = actions(settings.cli_parser(settings.PredictSettings))
    ins = actions(settings.cli_parser(settings.InspectSettings))
    assert tr["device"].choices is ev["device"].choices is pr["device"].choices is ins["device"].choices is DEVICES
    assert tr["dataset"].choices is ev["dataset"].choices is ins["dataset"].choices is DATASETS
    assert tr["gelu"].choices is ev["gelu"].choices is ins["gelu"].choices is GELU_FORMS
    assert tr["augment"].choices is AUGMENTS and ins["data_dir"].help == tr["data_dir"].help
    assert actions(settings.cli_parser(settings.PlotSettings))["runs"].nargs == "+"
    assert ev["dtype"].help == tr["dtype"].help and ev["checkpoint"].required and pr["checkpoint"].required
    with pytest.raises(SystemExit):
        settings.parse_settings(settings.EvaluateSettings, ["--checkpoint", "x.npz", "--dataset", "mnist",
                                                            "--batch-size", "0"])


def test_help_shows_the_dataclass_defaults(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(settings.TrainSettings):
        default = f.default if f.type != "bool" else ("on" if f.default else "off")
        assert f"(default: {default})" in text, f.name


def test_unknown_preset_key_is_named(tmp_path, capsys):
    (tmp_path / "p.json").write_text(json.dumps({"lr": 0.1, "learning_rate": 0.2, "bach_size": 3}))
    with pytest.raises(ValueError, match=r"p.json: unknown settings \['bach_size', 'learning_rate'\]"):
        settings.resolve_settings(["--config", str(tmp_path / "p.json")])


def test_cli_beats_preset_and_steps_beat_preset_epochs():
    s, _ = settings.resolve_settings(["--config", "fashion-mnist", "--lr", "0.5", "--steps", "7",
                                          "--warmup-steps", "2"])
    assert (s.lr, s.steps, s.epochs, s.dataset) == (0.5, 7, None, "fashion-mnist")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lr = 1.0


def test_resume_keeps_the_run_settings_but_runtime_ones(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    saved = settings.TrainSettings(lr=0.2, workers=2, out=str(out)).to_dict()
    (out / "config.json").write_text(json.dumps({"settings": saved}))
    s, resume = settings.resolve_settings(["--out", str(out), "--resume", "--lr", "0.2", "--workers", "1",
                                           "--mpi-timeout", "5"])
    assert resume and (s.lr, s.workers, s.mpi_timeout) == (0.2, 1, 5.0)
    with pytest.raises(ValueError, match="--lr, --steps cannot change on resume"):
        settings.resolve_settings(["--out", str(out), "--resume", "--lr", "9", "--steps", "20000"])


@pytest.mark.parametrize("bad,msg", [({"eval_every": 0}, "--eval-every must be a positive integer"),
                                     ({"workers": True}, "--workers must be a positive integer"),
                                     ({"mpi_timeout": 0}, "--mpi-timeout must be positive"),
                                     ({"augment": "rotate"}, "--augment must be one of"),
                                     ({"label_smoothing": 1.0}, r"--label-smoothing must lie in \[0, 1\)")])
def test_settings_validate_with_the_flag_name(bad, msg):
    with pytest.raises(ValueError, match=msg):
        settings.TrainSettings(**bad)


def test_readme_training_commands_resolve():
    """Every `python -m scratchvit.train ...` command line in README.md code blocks parses and passes
    the settings checks (a wrong flag, or a warmup as long as the run, fails before any data is read)."""
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().replace("\\\n", " ")
    blocks = readme.split("```")[1::2]  # the insides of the fenced code blocks
    commands = []
    for line in "\n".join(blocks).splitlines():
        if "scratchvit.train" not in line:
            continue
        words = shlex.split(line.split("#")[0])
        argv = words[words.index("scratchvit.train") + 1:]
        if (not argv or argv[0].startswith("--")) and "--resume" not in argv:  # not the layout table's mention
            commands.append(argv)
    assert [] in commands, commands  # the Quickstart: no flags
    assert len(commands) >= 5, commands  # the quickstart, fine-tuning, own images, from scratch, MPI
    for argv in commands:
        s, resume = settings.resolve_settings(argv)
        assert not resume, argv
    with pytest.raises(ValueError, match="--warmup-steps 500 must be below --steps 500"):
        settings.resolve_settings(["--config", "cifar10-finetune", "--steps", "500"])


def _interrupt_after_update(monkeypatch, at_call, signals=1):
    """Make the optimiser's update send itself SIGINT ``signals`` times right after its ``at_call``-th update."""
    import signal

    real_make = optim.make_optimizer
    calls = {"n": 0}

    def make(*a, **k):
        opt = real_make(*a, **k)
        real_update = opt.update

        def update(*ua, **uk):
            out = real_update(*ua, **uk)
            calls["n"] += 1
            if calls["n"] == at_call:
                for _ in range(signals):
                    signal.raise_signal(signal.SIGINT)
            return out

        opt.update = update
        return opt

    monkeypatch.setattr(optim, "make_optimizer", make)


def test_ctrl_c_during_a_step_saves_the_whole_step(fmnist_dir, tmp_path, monkeypatch):
    """A real SIGINT that lands after an update but before the step counter moves: the run stops at the
    next step boundary, saves step 7 with the parameters of step 7, and resumes bit for bit."""
    args = ("--optimizer", "adamw", "--lr", "0.01", "--steps", "10")
    assert run(fmnist_dir, tmp_path / "straight", *args) == 0
    with monkeypatch.context() as m:
        _interrupt_after_update(m, at_call=7)
        assert run(fmnist_dir, tmp_path / "stopped", *args) == 130
    with np.load(tmp_path / "stopped" / "state.npz") as st:
        assert int(st["step"]) == 7
    assert train.main(["--out", str(tmp_path / "stopped"), "--resume", "--no-progress"]) == 0
    with np.load(tmp_path / "straight" / "last.npz") as a, np.load(tmp_path / "stopped" / "last.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_second_ctrl_c_stops_without_saving(fmnist_dir, tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as m:
        _interrupt_after_update(m, at_call=6, signals=2)
        assert run(fmnist_dir, tmp_path / "r", "--steps", "10") == 130
    with np.load(tmp_path / "r" / "state.npz") as st:
        assert int(st["step"]) == 4  # the evaluation at step 4 saved it; the interrupt at step 6 did not
    assert "interrupted twice at step 5" in capsys.readouterr().out


def test_ctrl_c_stops_the_lr_sweep(fmnist_dir, tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as m:
        _interrupt_after_update(m, at_call=3)
        assert run(fmnist_dir, tmp_path / "sweep", "--lr-sweep", "0.001,0.01", "--sweep-steps", "8",
                   "--steps", "8") == 130
    assert not (tmp_path / "sweep" / "sweep.json").exists()
    assert not (tmp_path / "sweep" / "sweep_lr0.01").exists()  # the second rate never started
    assert "sweep was interrupted at lr 0.001" in capsys.readouterr().err


def test_resume_point_is_one_file(fmnist_dir, tmp_path, monkeypatch):
    """state.npz alone restores the run: a last.npz from another step (a crash between the two writes)
    changes nothing; arrays of the wrong shape are refused; a fresh run in the same folder removes
    the old resume point."""
    out = tmp_path / "r"
    args = ("--optimizer", "sgd", "--lr", "0.05", "--steps", "8")
    assert run(fmnist_dir, tmp_path / "straight", *args) == 0
    with monkeypatch.context() as m:
        interrupt_on_call(m, accumulate, "flat_loss_and_grads", 6)
        assert run(fmnist_dir, out, *args) == 130  # state saved at step 5
    with np.load(out / "last.npz") as z:  # last.npz of some other step
        sv.save_checkpoint(out / "last.npz", {k: z[k] + 1 for k in z.files})
    assert train.main(["--out", str(out), "--resume", "--no-progress"]) == 0
    with np.load(tmp_path / "straight" / "last.npz") as a, np.load(out / "last.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    with np.load(out / "state.npz") as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.endswith("head/kernel"))
    arrays[key] = arrays[key][:, :3]
    np.savez(out / "state.npz", **arrays)
    assert train.main(["--out", str(out), "--resume", "--no-progress"]) == 2

    with monkeypatch.context() as m:  # a fresh run in the same folder, stopped before it saved anything
        m.setattr(accumulate, "flat_loss_and_grads", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        m.setattr(train.runs, "save_state", lambda *a, **k: None)
        assert run(fmnist_dir, out, *args) == 130
    assert not (out / "state.npz").exists()  # the old run's resume point is gone, not resumed by mistake


def test_resume_drops_a_metrics_line_cut_short(fmnist_dir, tmp_path):
    out = tmp_path / "r"
    args = ("--optimizer", "sgd", "--lr", "0.05", "--steps", "8")
    assert run(fmnist_dir, out, *args) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["step"] <= 4]
    (out / "metrics.jsonl").write_text("\n".join(kept) + '\n{"step": 5, "spl')  # a crash mid-append
    with np.load(out / "state.npz") as z:
        arrays = {k: z[k] for k in z.files}
    assert int(arrays["step"]) == 8
    assert train.main(["--out", str(out), "--resume", "--no-progress"]) == 0
    assert all(json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines())


def test_evaluate_cli_takes_the_runs_gelu(fmnist_dir, tmp_path, capsys):
    """A run trained with --gelu erf is evaluated with erf unless --gelu says otherwise: the loss equals
    the one with --gelu erf given, and differs from --gelu tanh."""
    out = tmp_path / "run"
    assert run(fmnist_dir, out, "--optimizer", "adamw", "--lr", "0.01", "--steps", "8", "--gelu", "erf") == 0
    losses = {}
    for form in (None, "erf", "tanh"):
        j = tmp_path / f"{form}.json"
        argv = ["--checkpoint", str(out / "best.npz"), "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir),
                "--json", str(j)] + (["--gelu", form] if form else [])
        assert evaluate.main(argv) == 0
        losses[form] = json.loads(j.read_text())["loss"]
    assert losses[None] == losses["erf"] != losses["tanh"]


def test_fine_tuning_starts_from_a_zero_head_whatever_the_class_count(tmp_path):
    """--checkpoint: as vit_jax's load_pretrained, the head is zeroed and pre-logits dropped even when the
    checkpoint already has the dataset's 10 classes."""
    base = sv.ViT(sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, hidden_size=16, num_layers=1, num_heads=2,
                                mlp_dim=32, num_classes=10, representation_size=8), seed=0)
    base.params["head/kernel"][...] = 0.5
    sv.save_checkpoint(tmp_path / "pre.npz", base.params)
    s = settings.TrainSettings(checkpoint=str(tmp_path / "pre.npz"), image_size=16, out=str(tmp_path / "o"))
    model = train.build_model(s, num_classes=10)
    assert not model.params["head/kernel"].any() and "pre_logits/kernel" not in model.params


def test_an_older_state_file_without_parameters_still_resumes(tmp_path, rng):
    """state.npz of earlier versions held no parameters: load_state then takes them from last.npz."""
    from scratchvit import runs

    cfg = sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, hidden_size=16, num_layers=1, num_heads=2,
                        mlp_dim=32, num_classes=3)
    model = sv.ViT(cfg, seed=0)
    opt = optim.make_optimizer("sgd")
    state = opt.init(model.flat)
    for k in model.params:
        model.params[k] += 1.0
    runs.save_state(tmp_path, model, state, 12, 0.5, 0)
    with np.load(tmp_path / "state.npz") as z:
        old = {k: z[k] for k in z.files if not k.startswith("params/")}
    np.savez(tmp_path / "state.npz", **old)
    fresh = sv.ViT(cfg, seed=1)
    assert runs.load_state(tmp_path, fresh, opt.init(fresh.flat)) == (12, 0.5)
    for k in model.params:
        np.testing.assert_array_equal(fresh.params[k], model.params[k], err_msg=k)


def test_ctrl_c_in_the_last_step_stops_before_the_test_pass(fmnist_dir, tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as m:
        _interrupt_after_update(m, at_call=4)
        assert run(fmnist_dir, tmp_path / "r", "--steps", "4") == 130
    assert "test accuracy" not in capsys.readouterr().out
    with np.load(tmp_path / "r" / "state.npz") as st:
        assert int(st["step"]) == 4
    assert train.main(["--out", str(tmp_path / "r"), "--resume", "--no-progress"]) == 0  # just the test pass
    assert [r["split"] for r in metrics(tmp_path / "r")][-1] == "test"


def _disk_full_on(monkeypatch, name: str):
    """Writes of the file ``name`` fail as on a full disk: some bytes go out, then OSError(ENOSPC)."""
    import errno

    from scratchvit import checkpoint

    real = checkpoint.write_atomic

    def write_atomic(path, write, size=None):
        def full(f):
            f.write(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")

        return real(path, full if path.name == name else write, size)

    monkeypatch.setattr(checkpoint, "write_atomic", write_atomic)


@pytest.mark.parametrize("name", ["last.npz", "best.npz", "state.npz"])
def test_a_full_disk_while_saving_is_one_line_and_leaves_a_resume_point(fmnist_dir, tmp_path, monkeypatch, capsys,
                                                                          name):
    """The disk fills at the second evaluation (step 8): one line names the file and the space it needs (exit 2,
    no traceback); state.npz is written first, so a resume point is left (step 8, or step 4 when state.npz
    itself failed) and --resume carries on from it to the end."""
    out = tmp_path / "r"
    args = ("--optimizer", "sgd", "--lr", "0.05", "--steps", "12")
    real_save = train.validate_and_save
    calls = []

    def second_evaluation_fills_the_disk(run, val_x, val_y, step, *a, **k):
        calls.append(step)
        if len(calls) == 2:
            _disk_full_on(monkeypatch, name)
            run.best_val = -1.0  # this evaluation is the best so far: best.npz is written too
        return real_save(run, val_x, val_y, step, *a, **k)

    monkeypatch.setattr(train, "validate_and_save", second_evaluation_fills_the_disk)
    code = run(fmnist_dir, out, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and calls == [4, 8], (code, calls)
    line = err[-1]
    assert len(err) == 1, err  # one line, no traceback
    assert line.startswith(f"error: cannot write {out / name}: no space left on the device (it needs about "), line
    assert " free in " in line
    assert not list(out.glob("*.tmp"))
    with np.load(out / "state.npz") as st:
        saved = int(st["step"])
    assert saved == (4 if name == "state.npz" else 8)
    assert line.endswith(f"{out / 'state.npz'} {'still ' if name == 'state.npz' else ''}holds step {saved} "
                         "(--resume continues from it)"), line
    monkeypatch.undo()
    assert train.main(["--out", str(out), "--resume", "--no-progress"]) == 0
    assert metrics(out)[-1]["split"] == "test"


def test_resume_without_a_resume_point_is_an_error(fmnist_dir, tmp_path, capsys):
    """A run that stopped before it saved anything has config.json but no state.npz: --resume says so
    (exit 2) instead of training again from step 0."""
    out = tmp_path / "r"
    assert run(fmnist_dir, out, "--steps", "4") == 0
    (out / "state.npz").unlink()
    capsys.readouterr()
    assert train.main(["--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: {out} has no resume point ({out / 'state.npz'} not found" in err
    assert "start it again without --resume" in err
