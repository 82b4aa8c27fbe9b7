"""bench/gpu_check.sh without a GPU: its dry run, its failures, and the parity script on CPU devices.

The dry run prints every step's command and checks that the commands, scripts, flags and files exist;
CI runs it here so that the GPU check cannot rot between the rare runs on a GPU machine.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.sh"
STEPS = ("[0-install/imports]", "[1-environment]", "[2-gpu-tests]", "[3-parity]", "[4-train/fp32]",
         "[4-train/fp16]", "[4-train/fp16-vs-fp32]", "[5-speed]", "[6-report]")
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

from bench import gpu_check  # noqa: E402


def run_check(*args, env=None, timeout=300):
    e = {**os.environ, "GPU_CHECK_PYTHON": sys.executable, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=e, cwd=REPO,
                          timeout=timeout)


def fake_data(folder: Path, files=IDX) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f"{f}.gz").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dry")
    return run_check("--dry-run", "--data", str(fake_data(tmp / "data")), "--work", str(tmp / "work"),
                     "--out", str(tmp / "gpu_check.json"))


def test_dry_run_lists_every_step_and_finds_everything(dry_run):
    out = dry_run.stdout + dry_run.stderr
    for step in STEPS:
        assert step in out, f"{step} not in the dry run's output"
    for cmd in ("-m pytest -q -m gpu", "bench/gpu_parity.py --device gpu", "-m scratchvit.train --config fashion-mnist",
                "--precision fp16", "--data-dir", "bench/train_step.py --device gpu --compare torch --mode gpu"):
        assert cmd in out, cmd
    assert "MISSING" not in out and dry_run.returncode == 0, out[-3000:]
    assert "dry run: every command, file and flag is there" in out


def test_dry_run_fails_naming_a_missing_flag_and_a_missing_data_file(tmp_path):
    """A train module without --warmup-steps (GPU_CHECK_TRAIN_MODULE) and a data folder short of a file."""
    (tmp_path / "fake_train.py").write_text(textwrap.dedent("""
        import argparse
        p = argparse.ArgumentParser()
        for f in ("--config", "--device", "--steps", "--eval-every", "--precision", "--out", "--data-dir"):
            p.add_argument(f)
        p.add_argument("--no-progress", action="store_true")
        p.parse_args()
        """))
    data = fake_data(tmp_path / "data", IDX[:3])
    wheels = tmp_path / "wheels"  # names only: the dry run installs nothing
    wheels.mkdir()
    (wheels / "tqdm-4.70.1-py3-none-any.whl").write_bytes(b"")
    (wheels / "platformdirs-4.14.9-py3-none-any.whl").write_bytes(b"")
    r = run_check("--dry-run", "--data", str(data), "--wheels", str(wheels), "--work", str(tmp_path / "work"),
                  env={"GPU_CHECK_TRAIN_MODULE": "fake_train", "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"})
    out = r.stdout + r.stderr
    assert r.returncode != 0
    problems = out.split("problem(s):")[1]
    assert "MISSING  python -m fake_train: flag --warmup-steps in --help" in out
    assert "t10k-labels-idx1-ubyte.gz" in problems
    # what the GPU machine holds is checked there (step 0-install/imports): a dependency without a wheel is a note
    assert "note     array-api-compat: no wheel in --wheels: it must be installed on the GPU machine" in out
    assert "ok       platformdirs: wheel platformdirs-4.14.9-py3-none-any.whl" in out
    assert "array-api-compat" not in problems and "platformdirs" not in problems and "tqdm" not in problems
    assert "--precision in --help" not in problems  # the fake has it


def test_the_gpu_machines_build_backend_is_its_own_step_and_only_a_note_here(dry_run, tmp_path):
    """A fresh venv (setuptools 65.5, no wheel package) cannot build an editable install offline; that concerns the
    GPU machine only, so the dry run notes what it sees here and step 0-install/build-backend checks it there."""
    out = dry_run.stdout + dry_run.stderr
    assert "[0-install/build-backend]" in out and "bench/gpu_check.py backend" in out
    assert out.index("[0-install/build-backend]") < out.index("[0-install/project]")
    assert "step 0-install/build-backend checks it on the GPU machine" in out
    old = tmp_path / "old_setuptools"  # a setuptools that predates PEP 660, shadowing the real one
    (old / "setuptools").mkdir(parents=True)
    (old / "setuptools" / "__init__.py").write_text("__version__ = '63.4.0'\n")
    env = {**os.environ, "PYTHONPATH": f"{old}{os.pathsep}{REPO}"}
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "backend"], capture_output=True,
                       text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1 and "setuptools 63.4.0" in r.stdout and "cannot build" in r.stdout, r.stdout + r.stderr
    assert gpu_check.main(["backend"]) == (0 if gpu_check.editable_backend()[0] else 1)


def test_a_python_that_is_not_there_is_named(tmp_path):
    r = run_check("--dry-run", env={"GPU_CHECK_PYTHON": str(tmp_path / "no-python")})
    assert r.returncode != 0 and "MISSING python" in r.stderr


def test_without_a_gpu_the_check_stops_at_the_environment_step_and_reports_it(tmp_path):
    """Here (no GPU) the real run stops at step 1, or at step 0's imports where PyTorch is not installed."""
    import importlib.util

    out = tmp_path / "gpu_check.json"
    r = run_check("--no-install", "--work", str(tmp_path / "work"), "--out", str(out), timeout=600)
    assert r.returncode != 0
    rep = json.loads(out.read_text())
    assert rep["status"] == "failed"
    if importlib.util.find_spec("torch") is None:
        assert rep["failed_step"]["name"] == "0-install/imports" and "FAILED: step 0-install/imports" in r.stderr
        return
    assert "FAILED: step 1-environment" in r.stderr and "exit status 1" in r.stderr
    assert rep["failed_step"]["name"] == "1-environment"
    assert rep["failed_step"]["exit_status"] == 1 and "gpu_check.py env" in rep["failed_step"]["command"]
    assert [s["name"] for s in rep["steps"]] == ["0-install/imports", "1-environment"]
    assert rep["environment"]["python"] and "torch_version" in rep["environment"]  # measured so far


# ------------------------------------------------------------------------------ gpu_check.py's readers
def write_run(folder: Path, train_loss: float, test_acc: float) -> Path:
    folder.mkdir(parents=True)
    lines = [{"step": 300, "split": "train", "loss": train_loss, "images_per_sec": 1.0},
             {"step": 300, "split": "val", "loss": 0.5, "accuracy": 0.8},
             {"step": 300, "split": "test", "loss": 0.5, "accuracy": test_acc}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


@pytest.mark.parametrize("fp16_loss,ok", [(1.02, True), (0.98, True), (1.04, False)])
def test_fp16_loss_within_3_percent_of_fp32(tmp_path, fp16_loss, ok):
    for p, loss in (("fp32", 1.0), ("fp16", fp16_loss)):
        assert gpu_check.main(["train", "--run", str(write_run(tmp_path / p, loss, 0.8)),
                               "--json", str(tmp_path / f"{p}.json")]) == 0
    rc = gpu_check.main(["precision", "--fp32", str(tmp_path / "fp32.json"), "--fp16", str(tmp_path / "fp16.json"),
                         "--tol", "0.03", "--json", str(tmp_path / "p.json")])
    r = json.loads((tmp_path / "p.json").read_text())
    assert (rc == 0) == ok and r["ok"] == ok and r["relative_difference"] == pytest.approx(abs(fp16_loss - 1))
    assert json.loads((tmp_path / "fp16.json").read_text())["test_accuracy"] == 0.8


def test_a_run_without_a_test_record_fails(tmp_path):
    run = write_run(tmp_path / "r", 1.0, 0.8)
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    assert gpu_check.main(["train", "--run", str(run), "--json", str(tmp_path / "r.json")]) == 1


def test_skipped_gpu_tests_fail_the_step(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite tests="2" failures="0" errors="0" skipped="1" time="1.5">'
                   '<testcase classname="tests.test_gpu" name="a"/><testcase classname="tests.test_gpu" name="b">'
                   '<skipped message="no CUDA GPU visible to CuPy"/></testcase></testsuite></testsuites>')
    assert gpu_check.main(["junit", "--xml", str(xml), "--json", str(tmp_path / "t.json")]) == 1
    r = json.loads((tmp_path / "t.json").read_text())
    assert r["passed"] == 1 and r["skipped"] == 1 and "no CUDA GPU" in r["skipped_tests"][0]
    xml.write_text(xml.read_text().replace('skipped="1"', 'skipped="0"').replace(
        '<skipped message="no CUDA GPU visible to CuPy"/>', ''))
    assert gpu_check.main(["junit", "--xml", str(xml), "--json", str(tmp_path / "t.json")]) == 0


def test_a_skip_named_by_allow_skip_passes(tmp_path):
    """On a 1-GPU machine the 2-rank NCCL test skips: allowed by name, while a missing CuPy still fails."""
    xml = tmp_path / "t.xml"
    for reason, rc in (("NCCL needs one GPU per rank: fewer than 2 CUDA devices", 0), ("CuPy is not installed", 1)):
        xml.write_text(f'<testsuites><testsuite tests="1" failures="0" errors="0" skipped="1">'
                       f'<testcase classname="t" name="n"><skipped message="{reason}"/></testcase>'
                       f'</testsuite></testsuites>')
        assert gpu_check.main(["junit", "--xml", str(xml), "--json", str(tmp_path / "t.json"),
                               "--allow-skip", "fewer than 2 CUDA devices", "--allow-skip", "needs mpiexec"]) == rc


def test_report_names_the_failed_step_and_keeps_what_was_measured(tmp_path):
    (tmp_path / "steps.tsv").write_text("1-environment\t0\t3\tpython env\n"
                                        "3-parity\t1\t20\tpython bench/gpu_parity.py\n")
    (tmp_path / "parity.json").write_text(json.dumps({"ok": False}))
    gpu_check.main(["report", "--work", str(tmp_path), "--out", str(tmp_path / "r.json")])
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["status"] == "failed" and r["failed_step"] == {"name": "3-parity", "exit_status": 1,
                                                            "command": "python bench/gpu_parity.py"}
    assert r["parity"] == {"ok": False} and r["total_seconds"] == 23


# ------------------------------------------------------------------------------ the parity script
def parity(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "gpu_parity.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)


def test_parity_cpu_against_cpu_compares_every_gradient(tmp_path):
    r = parity("--device", "cpu", "--small", "--json", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "p.json").read_text())
    import scratchvit as sv
    from bench.gpu_parity import MODELS

    base, fields, _ = MODELS["small"]
    n = len(sv.param_shapes(sv.get_config(base, **fields)))
    assert [(c["model"], c["dtype"]) for c in res["cases"]] == [("small", "float64"), ("small", "float32")]
    for c in res["cases"]:
        assert c["ok"] and c["grads_compared"] == n and c["logits_rel"] == 0 and c["worst_grad_rel"] == 0


def test_parity_strict_device_against_cpu(tmp_path):
    """The run CI can do: the array-API path on a non-CPU device against NumPy, float64 1e-10, float32 1e-4."""
    pytest.importorskip("array_api_strict")
    r = parity("--device", "strict", "--small", "--json", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "p.json").read_text())
    assert res["ok"] and len(res["cases"]) == 2 and all(c["ok"] for c in res["cases"])


def test_a_module_skipped_at_collection_counts_only_if_it_holds_gpu_tests(tmp_path):
    """array-api-strict is not on the GPU image: modules that need it skip whole, even under -m gpu."""
    xml = tmp_path / "t.xml"
    for body, rc in (("def test_x(): pass\n", 0), ("import pytest\npytestmark = pytest.mark.gpu\n", 1)):
        mod = tmp_path / "test_mod.py"
        mod.write_text(body)
        xml.write_text(f'<testsuites><testsuite tests="2" failures="0" errors="0" skipped="1">'
                       f'<testcase classname="" name="test_mod"><skipped message="collection skipped">'
                       f"('{mod}', 2, 'Skipped: array-api-strict is in the [test] extra')</skipped></testcase>"
                       f'<testcase classname="t" name="g"/></testsuite></testsuites>')
        assert gpu_check.main(["junit", "--xml", str(xml), "--json", str(tmp_path / "t.json")]) == rc


def test_parity_strict_device_against_cpu_for_a_hybrid(tmp_path):
    """The hybrid (ResNet root and stages, paper Sec. 3.1) in the parity script: every gradient compared."""
    pytest.importorskip("array_api_strict")
    r = parity("--device", "strict", "--models", "hybrid-small", "--json", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "p.json").read_text())
    assert res["ok"] and [c["model"] for c in res["cases"]] == ["hybrid-small"] * 2
    assert all(c["ok"] and c["grads_compared"] == 69 for c in res["cases"])
    assert parity("--models", "nope").returncode == 2
