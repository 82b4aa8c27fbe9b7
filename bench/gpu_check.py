#!/usr/bin/env python
"""The Python half of bench/gpu_check.sh: the environment report, the readers of each step's output,
the dry run's checks and the final JSON. Standard library only (NumPy, CuPy, PyTorch are asked for by
subprocess or imported inside the functions), so that it runs before anything is installed.

    python bench/gpu_check.py backend                            # step 0: can pip build an editable install offline
    python bench/gpu_check.py env --json F [--require-gpu]       # step 1: nvidia-smi, python, cupy, torch, GPU
    python bench/gpu_check.py junit --xml F --json F             # step 2: pytest's counts; fails on skips
    python bench/gpu_check.py train --run DIR --json F           # step 4: a run's final train loss, test accuracy
    python bench/gpu_check.py precision --fp32 F --fp16 F --tol 0.03 --json F   # step 4: fp16 against fp32
    python bench/gpu_check.py report --work DIR --out F          # step 6: everything so far -> one JSON
    python bench/gpu_check.py preflight --commands F [--wheels DIR] [--data DIR]  # the dry run's checks
"""
from __future__ import annotations

import argparse
import configparser
import datetime
import functools
import importlib
import importlib.util
import json
import platform
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# distribution -> import name where they differ (else the name with - as _)
IMPORT_NAMES = {"pillow": "PIL"}
CHECK_NEEDS = ("pytest", "torch")  # beside the project's own dependencies: the tests and the speed step


def requirements() -> list[str]:
    """The distributions the check imports: setup.cfg's install_requires, then CHECK_NEEDS."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    names = [re.split(r"[<>=!~ ;\[]", r.strip())[0] for r in cfg.get("options", "install_requires").split("\n")]
    return [n for n in names if n] + list(CHECK_NEEDS)


def import_name(dist: str) -> str:
    return IMPORT_NAMES.get(dist.lower(), dist.lower().replace("-", "_"))


def cmd_imports(a) -> int:
    """Step 0: every requirement and scratchvit itself import (versions printed); exit 1 naming the missing."""
    missing = []
    for dist in requirements() + ["scratchvit"]:
        try:
            mod = importlib.import_module(import_name(dist))
            print(f"{dist}: {getattr(mod, '__version__', '?')}")
        except ImportError as e:
            print(f"{dist}: MISSING ({e})")
            missing.append(dist)
    if missing:
        print(f"error: not importable: {', '.join(missing)}", file=sys.stderr)
    return 1 if missing else 0
# The fragments each step leaves in the work folder, in step order, and the report's key for each.
FRAGMENTS = (("env.json", "environment"), ("gpu_tests.json", "gpu_tests"), ("parity.json", "parity"),
             ("train_fp32.json", "train_fp32"), ("train_fp16.json", "train_fp16"),
             ("precision.json", "train_fp16_vs_fp32"), ("speed.json", "speed"))


def write_json(path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


@functools.lru_cache(maxsize=None)
def _run(cmd: tuple, timeout: float) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, str(e)
    return p.returncode, p.stdout + p.stderr


def run(cmd: list[str], timeout: float = 60) -> tuple[int, str]:
    """(exit status, stdout + stderr) of a command; 127 and the reason when it cannot start. The same
    command is run once per process (the dry run asks for some --help texts several times)."""
    return _run(tuple(cmd), timeout)


def editable_backend() -> tuple[bool, str]:
    """Whether ``pip install --no-index --no-build-isolation -e .`` can build with the setuptools installed here:
    PEP 660 editable installs need setuptools >= 64, and bdist_wheel comes with setuptools >= 70.1, else from
    the ``wheel`` package. Returns (ok, a line naming what was found)."""
    try:
        import setuptools
    except ImportError:
        return False, "setuptools not installed"
    v = tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2])
    wheel = v >= (70, 1) or importlib.util.find_spec("wheel") is not None
    line = f"setuptools {setuptools.__version__}" + ("" if wheel else ", no wheel package")
    return v >= (64, 0) and wheel, line


def cmd_backend(a) -> int:
    """Step 0, before the project's install on the GPU machine (no network, so no build isolation)."""
    ok, line = editable_backend()
    print(f"build backend: {line}: {'can' if ok else 'cannot'} build an editable install without build isolation")
    if not ok:
        print("error: bring setuptools >= 70.1 (or >= 64 and wheel) as wheels in --wheels", file=sys.stderr)
    return 0 if ok else 1


# ------------------------------------------------------------------------------ step 1: environment
def environment() -> dict:
    """nvidia-smi, Python, NumPy, CuPy (with its CUDA versions and device), PyTorch (with CUDA), GPU name."""
    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "python_executable": sys.executable,
           "platform": platform.platform()}
    if shutil.which("nvidia-smi"):
        rc, out = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                       "--format=csv,noheader"])
        env["nvidia_smi_query"] = out.strip() if rc == 0 else f"failed ({rc}): {out.strip()[:300]}"
        rc, out = run(["nvidia-smi"])
        env["nvidia_smi"] = out
        m = re.search(r"CUDA Version:\s*([\d.]+)", out)
        env["driver_cuda_version"] = m.group(1) if m else None
    else:
        env["nvidia_smi"] = None
    for mod in ("numpy", "scratchvit", "array_api_compat", "tqdm", "PIL", "pytest"):
        try:
            env[f"{mod}_version"] = getattr(__import__(mod), "__version__", "?")
        except ImportError as e:
            env[f"{mod}_version"] = f"not importable: {e}"
    try:
        import cupy

        env["cupy_version"] = cupy.__version__
        try:
            env["cupy_cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            env["cupy_cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
            env["cupy_device_count"] = cupy.cuda.runtime.getDeviceCount()
            props = cupy.cuda.runtime.getDeviceProperties(0)
            env["cupy_gpu_name"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            env["gpu_compute_capability"] = f"{props['major']}.{props['minor']}"
            env["gpu_memory_bytes"] = int(props["totalGlobalMem"])
        except Exception as e:  # noqa: BLE001  (no driver or no device: CuPy raises its own error types)
            env["cupy_error"] = f"{type(e).__name__}: {e}"
    except ImportError as e:
        env["cupy_version"] = f"not importable: {e}"
    try:
        import torch

        env["torch_version"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["torch_cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["torch_gpu_name"] = torch.cuda.get_device_name(0)
    except ImportError as e:
        env["torch_version"] = f"not importable: {e}"
    env["gpu_name"] = env.get("cupy_gpu_name") or env.get("torch_gpu_name")
    return env


def cmd_env(a) -> int:
    env = environment()
    if env.get("nvidia_smi"):
        print(env["nvidia_smi"])
    for k, v in env.items():
        if k != "nvidia_smi":
            print(f"{k}: {v}")
    write_json(a.json, env)
    if a.require_gpu:
        problems = [p for p, bad in (
            ("nvidia-smi not found or failed", not env.get("nvidia_smi")),
            ("CuPy sees no GPU", not env.get("cupy_device_count")),
            ("PyTorch sees no CUDA GPU", not env.get("torch_cuda_available"))) if bad]
        if problems:
            print("error: " + "; ".join(problems), file=sys.stderr)
            return 1
    return 0


# ------------------------------------------------------------------------------ step 2: the gpu tests
def cmd_junit(a) -> int:
    """pytest's junit XML -> counts; fails when nothing ran, anything failed, or a gpu test was skipped for a
    reason that matches none of --allow-skip (e.g. the 2-GPU NCCL test on a 1-GPU machine)."""
    root = ET.parse(a.xml).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    skipped, irrelevant = [], []
    for c in root.iter("testcase"):
        for s in c.findall("skipped"):
            what = f"{c.get('classname')}.{c.get('name')}: {s.get('message', '')} {(s.text or '').strip()}"[:300]
            # a module skipped whole at collection (a missing test extra, e.g. array-api-strict) matters only
            # if it holds gpu tests: pytest reports it even when -m gpu would have deselected all its tests
            whole = s.get("message") == "collection skipped"
            m = re.match(r"\('([^']+\.py)'", (s.text or "").strip()) if whole else None
            if m and Path(m.group(1)).is_file() and "mark.gpu" not in Path(m.group(1)).read_text():
                irrelevant.append(what)
            else:
                skipped.append(what)
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["skipped_modules_without_gpu_tests"] = irrelevant
    allowed = [x for x in skipped if any(re.search(p, x) for p in a.allow_skip)]
    counts["skipped_tests"] = skipped
    counts["skipped_allowed"] = allowed
    counts["seconds"] = sum(float(s.get("time", 0)) for s in suites)
    write_json(a.json, counts)
    print(f"gpu tests: {counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
          f"{counts['skipped']} skipped ({len(allowed)} of them allowed)")
    for x in skipped:
        print(f"  skipped{' (allowed)' if x in allowed else ''}: {x}")
    for x in irrelevant:
        print(f"  skipped at collection, no gpu tests in it (ignored): {x}")
    if counts["tests"] == 0 or counts["failures"] or counts["errors"] or len(skipped) > len(allowed):
        print("error: every gpu-marked test must run and pass on the GPU machine (skips allowed only for: "
              f"{', '.join(a.allow_skip) or 'none'})", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------ step 4: training runs
def read_run(run_dir: Path) -> dict:
    """The final train-window loss, validation and test accuracy of a run's metrics.jsonl."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = {}
    for r in lines:
        last[r["split"]] = r
    if "train" not in last or "test" not in last:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: no {'train' if 'train' not in last else 'test'} record")
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    return {"run": str(run_dir), "step": last["train"]["step"], "final_train_loss": last["train"]["loss"],
            "train_images_per_s": last["train"].get("images_per_sec"),
            "val_accuracy": last.get("val", {}).get("accuracy"), "test_accuracy": last["test"]["accuracy"],
            "test_loss": last["test"]["loss"], "settings": cfg.get("settings"),
            # fp16 runs: steps skipped for an overflow (over the last training window) and the final loss scale
            "skipped_steps": last["train"].get("skipped_steps"), "loss_scale": last["train"].get("loss_scale")}


def cmd_train(a) -> int:
    try:
        r = read_run(Path(a.run))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_json(a.json, r)
    print(f"{a.run}: step {r['step']}, final train loss {r['final_train_loss']:.4f}, "
          f"test accuracy {100 * r['test_accuracy']:.2f}%")
    return 0


def cmd_precision(a) -> int:
    f32, f16 = (json.loads(Path(p).read_text()) for p in (a.fp32, a.fp16))
    rel = abs(f16["final_train_loss"] - f32["final_train_loss"]) / abs(f32["final_train_loss"])
    r = {"fp32_final_train_loss": f32["final_train_loss"], "fp16_final_train_loss": f16["final_train_loss"],
         "relative_difference": rel, "tolerance": a.tol, "ok": rel <= a.tol,
         "fp32_test_accuracy": f32["test_accuracy"], "fp16_test_accuracy": f16["test_accuracy"],
         "fp16_skipped_steps": f16.get("skipped_steps"), "fp16_loss_scale": f16.get("loss_scale")}
    write_json(a.json, r)
    print(f"final train loss fp16 {r['fp16_final_train_loss']:.4f} vs fp32 {r['fp32_final_train_loss']:.4f}: "
          f"{100 * rel:.2f}% apart (tolerance {100 * a.tol:.0f}%) -> {'ok' if r['ok'] else 'FAIL'}; test accuracy "
          f"fp16 {100 * r['fp16_test_accuracy']:.2f}% vs fp32 {100 * r['fp32_test_accuracy']:.2f}%; fp16 skipped "
          f"{r['fp16_skipped_steps']} steps, final loss scale {r['fp16_loss_scale']}")
    return 0 if r["ok"] else 1


# ------------------------------------------------------------------------------ step 6: the report
def cmd_report(a) -> int:
    work = Path(a.work)
    rep = {"status": "passed", "failed_step": None, "work": str(work.resolve()), "steps": []}
    tsv = work / "steps.tsv"
    for line in tsv.read_text().splitlines() if tsv.exists() else []:
        name, rc, seconds, cmd = line.split("\t", 3)
        rep["steps"].append({"name": name, "exit_status": int(rc), "seconds": float(seconds), "command": cmd})
        if int(rc) != 0 and rep["failed_step"] is None:
            rep["status"], rep["failed_step"] = "failed", {"name": name, "command": cmd, "exit_status": int(rc)}
    if a.failed:  # the shell's word for a failure outside a recorded command (e.g. the time budget)
        rep["status"] = "failed"
        rep["failed_step"] = rep["failed_step"] or {"name": a.failed, "command": None, "exit_status": None}
    elif not a.complete and rep["status"] == "passed":
        rep["status"] = "incomplete"
    for fname, key in FRAGMENTS:
        if (work / fname).exists():
            rep[key] = json.loads((work / fname).read_text())
    rep["total_seconds"] = sum(s["seconds"] for s in rep["steps"])
    write_json(a.out, rep)
    print(f"gpu check: {rep['status']}" + (f" at step {rep['failed_step']['name']}" if rep["failed_step"] else "")
          + f"; report {a.out}")
    return 0


# ------------------------------------------------------------------------------ the dry run
class Checks:
    def __init__(self):
        self.problems, self.notes = [], []

    def ok(self, what):
        print(f"  ok       {what}")

    def bad(self, what):
        print(f"  MISSING  {what}")
        if what not in self.problems:
            self.problems.append(what)

    def note(self, what):
        print(f"  note     {what}")
        self.notes.append(what)

    def check(self, cond, what):
        (self.ok if cond else self.bad)(what)
        return cond


def flags_of(args: list[str]) -> list[str]:
    return [x.split("=")[0] for x in args if x.startswith("--")]


def check_cli(c: Checks, py: str, target: list[str], args: list[str], label: str) -> None:
    """``target --help`` works and names every flag of ``args``; ``target args --help`` accepts their values."""
    sub = []
    while args and not args[0].startswith("-"):  # a subcommand (gpu_check.py env ...)
        sub.append(args.pop(0))
    rc, text = run([py, *target, *sub, "--help"], timeout=120)
    if not c.check(rc == 0, f"{label} --help (exit status {rc})"):
        print("           " + text.strip().replace("\n", "\n           ")[-600:])
        return
    for f in flags_of(args):
        c.check(re.search(re.escape(f) + r"(?![\w-])", text) is not None, f"{label}: flag {f} in --help")
    rc, out = run([py, *target, *sub, *args, "--help"], timeout=120)
    if not c.check(rc == 0, f"{label}: the step's values accepted ({' '.join(sub + args)} --help, status {rc})"):
        print("           " + out.strip().splitlines()[-1] if out.strip() else "")
    if "--config" in args:  # a preset name must be one the module lists
        name = args[args.index("--config") + 1]
        c.check(Path(name).exists() or name in text, f"{label}: preset {name!r} known")


def check_command(c: Checks, line: str, wheels: list[str]) -> None:
    tok = shlex.split(line)
    print(f"$ {line}")
    py, rest = tok[0], tok[1:]
    if rest[:2] == ["-m", "pip"]:
        rc, _ = run([py, "-m", "pip", "--version"])
        c.check(rc == 0, "pip usable")
        for w in [x for x in rest if x.endswith(".whl")]:
            c.check(Path(w).is_file(), f"wheel {w}")
        if "-e" in rest and "--no-build-isolation" in rest:
            # a fact of the GPU machine's environment, checked there by step 0-install/build-backend; here a note
            rc, out = run([py, str(REPO / "bench" / "gpu_check.py"), "backend"])
            said = out.strip().splitlines()[0] if out.strip() else f"exit status {rc}"
            c.note(f"here: {said}; step 0-install/build-backend checks it on the GPU machine")
        for i, x in enumerate(rest):
            if x == "--find-links":
                c.check(Path(rest[i + 1]).is_dir(), f"wheels folder {rest[i + 1]}")
        return
    if rest[:2] == ["-m", "pytest"]:
        c.check(run([py, "-m", "pytest", "--version"])[0] == 0,
                "pytest importable")
        if "-m" in rest[2:]:
            marker = rest[2:][rest[2:].index("-m") + 1]
            cfg = configparser.ConfigParser()
            cfg.read(REPO / "setup.cfg")
            markers = cfg.get("tool:pytest", "markers", fallback="")
            c.check(re.search(rf"^\s*{re.escape(marker)}\s*:", markers, re.M) is not None,
                    f"pytest marker {marker!r} declared in setup.cfg")
        for x in rest[2:]:
            if not x.startswith("-") and x.rstrip("/").split("/")[0] == "tests":
                c.check((REPO / x).exists(), f"test path {x}")
        c.check((REPO / "tests" / "test_gpu.py").is_file(), "tests/test_gpu.py")
        return
    if rest[:1] == ["-c"]:
        rc, out = run([py, *rest])
        if rc == 0:
            c.ok(f"imports: {rest[1]}")
            return
        missing = re.findall(r"No module named '([^']+)'", out)
        for m in missing or [out.strip().splitlines()[-1] if out.strip() else f"status {rc}"]:
            dist = {v: k for k, v in IMPORT_NAMES.items()}.get(m.split(".")[0], m)
            have = [w for w in wheels if Path(w).name.lower().replace("_", "-").startswith(dist.lower() + "-")]
            if have:
                c.note(f"{m} not importable here; its wheel {Path(have[0]).name} is in --wheels")
            else:
                c.bad(f"module {m} (no wheel for {dist} in --wheels)")
        return
    if rest[:1] == ["-m"]:
        module = rest[1]
        rc, _ = run([py, "-c", f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"])
        if c.check(rc == 0, f"module {module} importable"):
            check_cli(c, py, ["-m", module], rest[2:], f"python -m {module}")
        return
    script = rest[0]
    if c.check((REPO / script).is_file(), f"script {script}"):
        check_cli(c, py, [str(REPO / script)], rest[1:], script)


def cmd_preflight(a) -> int:
    c = Checks()
    wheels = sorted(str(p) for p in Path(a.wheels).glob("*.whl")) if a.wheels else []
    print("dry run: checking the commands above, their files and flags, without running the GPU parts")
    print(f"python: {a.python}")
    rc, out = run([a.python, "-c", "import sys; print(sys.version.split()[0])"])
    c.check(rc == 0, f"python runs ({out.strip()})")
    if rc == 0 and not out.strip().startswith("3.12"):
        c.note(f"python here is {out.strip()}; the GPU machines have 3.12 (wheels must be for 3.12)")
    for line in Path(a.commands).read_text().splitlines():
        if line.strip():
            check_command(c, line.strip(), wheels)
    print("other requirements")
    c.check(shutil.which("timeout") is not None, "timeout (coreutils): each step runs under a time limit")
    for f in ("setup.cfg", "pyproject.toml", "tests/test_gpu.py", "bench/harness.py", "bench/torch_reference.py",
              "bench/probes.py"):
        c.check((REPO / f).is_file(), f"file {f}")
    rc, out = run([a.python, "-c", "import torch; print(torch.__version__, hasattr(torch, 'compile'))"])
    if rc:  # CI need not have PyTorch; step 0-install/imports checks it on the GPU machine
        c.note("torch not importable here: step 0-install/imports checks it on the GPU machine "
               "(step 5 needs torch.compile)")
    else:
        c.check(out.split()[-1:] == ["True"], f"torch with torch.compile ({out.strip()[:80]})")
    rc, out = run([a.python, "-c", "import cupy; print(cupy.__version__)"])
    if rc:
        c.note("cupy not importable here: it is on the GPU machine (cupy-cuda13x); step 1 checks it there")
    else:
        c.ok(f"cupy {out.strip()}")
    if shutil.which("nvidia-smi"):
        c.ok("nvidia-smi found")
    else:
        c.note("nvidia-smi not found here: step 1 needs it on the GPU machine")
    print("what the check imports (setup.cfg's install_requires, pytest, torch):")
    if a.wheels:
        print(f"wheels folder {a.wheels}:")
        c.check(Path(a.wheels).is_dir() and bool(wheels), f"--wheels {a.wheels} holds .whl files")
        for w in wheels:
            print(f"    {Path(w).name}")
    for dist in requirements():
        norm = dist.lower().replace("-", "_")
        wheel = [w for w in wheels if Path(w).name.lower().startswith(norm + "-")]
        rc, out = run([a.python, "-c", f"import {import_name(dist)}"])
        here = "importable here" if rc == 0 else "not importable here"
        if wheel:
            c.ok(f"{dist}: wheel {Path(wheel[0]).name} ({here})")
        else:  # what the GPU machine holds is checked there, by step 0-install/imports
            c.note(f"{dist}: no wheel in --wheels: it must be installed on the GPU machine ({here})")
    if a.data:
        print(f"data folder {a.data}:")
        d = Path(a.data)
        for s in IDX_FILES:
            found = [p for dd in (d, d / "fashion-mnist") for p in (dd / f"{s}.gz", dd / s) if p.is_file()]
            c.check(bool(found), f"{found[0] if found else d / (s + '.gz')}")
    else:
        c.note("no --data: training looks for Fashion-MNIST itself (system copy, cache, download); "
               "the GPU machine has no network, so bring the files with --data")
    if c.problems:
        print(f"dry run: {len(c.problems)} problem(s):")
        for p in c.problems:
            print(f"  - {p}")
        return 1
    print(f"dry run: every command, file and flag is there ({len(c.notes)} note(s))")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("imports", help="step 0: setup.cfg's install_requires, pytest, torch and scratchvit import")
    sub.add_parser("backend", help="step 0: the installed setuptools can build an editable install offline")
    e = sub.add_parser("env", help="step 1: the environment report")
    e.add_argument("--json", required=True)
    e.add_argument("--require-gpu", action="store_true", help="exit 1 unless nvidia-smi, CuPy and PyTorch see a GPU")
    j = sub.add_parser("junit", help="step 2: pytest's junit XML to counts")
    j.add_argument("--xml", required=True)
    j.add_argument("--json", required=True)
    j.add_argument("--allow-skip", action="append", default=[], metavar="REGEX",
                   help="a skip whose test name or reason matches REGEX does not fail the step (repeatable)")
    t = sub.add_parser("train", help="step 4: a run's final metrics")
    t.add_argument("--run", required=True)
    t.add_argument("--json", required=True)
    q = sub.add_parser("precision", help="step 4: fp16's final train loss against fp32's")
    q.add_argument("--fp32", required=True)
    q.add_argument("--fp16", required=True)
    q.add_argument("--tol", type=float, default=0.03)
    q.add_argument("--json", required=True)
    r = sub.add_parser("report", help="step 6: the work folder's fragments into one JSON")
    r.add_argument("--work", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--complete", action="store_true", help="every step ran")
    r.add_argument("--failed", default=None, help="the name of a step that failed outside a recorded command")
    f = sub.add_parser("preflight", help="the dry run's checks of the commands in a file")
    f.add_argument("--commands", required=True, help="one shell-quoted command a line")
    f.add_argument("--python", default=sys.executable)
    f.add_argument("--wheels", default=None)
    f.add_argument("--data", default=None)
    a = p.parse_args(argv)
    return {"imports": cmd_imports, "backend": cmd_backend, "env": cmd_env, "junit": cmd_junit, "train": cmd_train,
            "precision": cmd_precision, "report": cmd_report, "preflight": cmd_preflight}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
