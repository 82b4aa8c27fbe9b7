#!/usr/bin/env python
"""Time scratchvit's training step beside the same step in PyTorch (eager and torch.compile).

    python bench/train_step.py --suite small-vits --threads 2  # 3 geometries -> results/train_step_small-vits_*
    python bench/train_step.py --compare torch --threads 2     # ViT-Ti_16, 224 px, batch 32
    python bench/train_step.py --image-size 28 --patch-size 7 --hidden-size 128 --num-layers 4 \\
        --num-heads 4 --mlp-dim 256 --num-classes 10 --classifier gap --batch-size 128 --compare torch
    python bench/train_step.py --mode cli --profile 25        # cProfile of scratchvit's step, this process

A *training step* is what ``python -m scratchvit.train`` does per batch: ``model.loss_and_grads``,
clipping at global norm 1.0, an SGD-momentum update; the PyTorch step is the idiomatic equivalent
on a model built from the same parameters (bench/torch_reference.py), fed the same batch.

Method (bench/README.md): ``--rounds`` rounds; in each, every runner in turn (order alternating)
sleeps ``--pause`` s, then runs ``--steps`` timed steps. Per round, ratio = PyTorch's median step
time / scratchvit's; reported: the median ratio over the rounds with its min-max, and images/s from
the median of all steps. ``--mode both`` (the default with ``--compare torch``) runs the
measurement twice, each in a fresh subprocess:

* ``plain``: a plain script - NumPy imported first, then scratchvit, no CLI settings (scratchvit's
  CPU settings apply themselves when the model is built; OpenBLAS's thread timeout cannot);
* ``cli``: as ``python -m scratchvit.train`` - scratchvit imported first, ``cpu.configure()``;
* ``compile``: CLI-like, with ``torch.compile(model)`` in place of PyTorch eager (a third process,
  so that the plain and CLI-like processes hold the same runners); a failure is reported in one line.

``--device gpu --compare torch --mode gpu`` (bench/gpu_check.sh's speed step) holds every runner in one
process instead: scratchvit, PyTorch eager and torch.compile, each in fp32 and in fp16 (``--precisions``;
scratchvit's mixed precision, PyTorch's float16 autocast with a GradScaler), the device synchronised
before each clock read; ratios are PyTorch's median step time over scratchvit's of the same precision.
scratchvit and PyTorch eager are warmed up and timed first (and written to --json), then torch.compile's
runners, whose warm-ups compile, in rounds of their own with scratchvit's runners again.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/train_step.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `bench` imports as a package

from bench import harness as h  # noqa: E402
from bench import probes  # noqa: E402

SUITES = {"small-vits": {  # name -> (geometry options, steps per round)
    name: (h.geometry_args(name), 2 if name == "ti16_b32" else 3) for name in h.SUITE_GEOMETRIES}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_model_args(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per runner and round (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per runner first (default 1)")
    p.add_argument("--compare", choices=["torch"], default=None, help="time the same step in PyTorch too")
    p.add_argument("--mode", choices=["plain", "cli", "compile", "both", "gpu"], default=None,
                   help="how the process is set up (see above); default: both with --compare torch, else cli; "
                   "gpu: all runners in one process, fp32 and fp16")
    p.add_argument("--precisions", default="fp32,fp16", help="with --mode gpu: comma-separated (default fp32,fp16)")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="with --mode gpu: seconds for building and warming up the runners (torch.compile compiles "
                   "then); a runner not warmed up by then is reported as skipped and the others are timed")
    p.add_argument("--no-torch-compile", action="store_true", help="with --mode both: skip the torch.compile process")
    p.add_argument("--torch-sdpa", action="store_true",
                   help="PyTorch attention via F.scaled_dot_product_attention (default: explicit softmax(QK^T)V)")
    p.add_argument("--parts", action="store_true", help="also time forward / backward / update / inference apart")
    p.add_argument("--memory", action="store_true", help="also measure peak memory (a subprocess per framework)")
    p.add_argument("--profile", nargs="?", const=25, type=int, metavar="N",
                   help="after timing, cProfile scratchvit's step, top N lines by tottime (25)")
    p.add_argument("--pause", type=float, default=0.2, help="sleep before each runner's turn (default 0.2 s)")
    p.add_argument("--suite", choices=sorted(SUITES), help="run a fixed set of geometries, both modes, to --out-dir")
    p.add_argument("--out-dir", default=str(h.BENCH_DIR / "results"))
    p.add_argument("--json", metavar="FILE", help="write all results to FILE as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_probe", choices=["scratchvit", "torch"], help=argparse.SUPPRESS)
    return p


# ------------------------------------------------------------------------------ one process
def setup(mode: str) -> dict:
    """Import NumPy and scratchvit the way ``mode`` says; returns what the process ends up with."""
    if mode == "plain":
        import numpy  # noqa: F401  (first, as a plain script does)

        import scratchvit  # noqa: F401
    else:
        import scratchvit  # noqa: F401  (first: sets OPENBLAS_THREAD_TIMEOUT before NumPy loads OpenBLAS)
        from scratchvit import cpu

        cpu.configure()
    return {"mode": mode, "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT")}


def measure(args) -> dict:
    """Everything measured in this process: agreement, peak, interleaved rounds, optional parts/profile."""
    res = {"process": setup(args.mode)}
    import numpy as np

    from bench import flops
    from scratchvit import cpu

    cfg = h.make_config(args)
    images, labels = h.make_batch(cfg, args.batch_size, args.dtype, args.seed)
    runners = [h.ScratchRunner(cfg, images, labels, args.device, args.dtype, args.seed)]
    res["process"]["cpu_settings"] = cpu.configure()  # as the model build left them
    res.update({"config": cfg.to_dict(), "batch_size": args.batch_size, "dtype": args.dtype, "device": args.device,
                "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
                "flops_train_step": flops.train_step_flops(cfg, args.batch_size),
                "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "numpy": np.__version__,
                            "python": platform.python_version(), "blas_threads": probes.blas_threads(),
                            "load_average": os.getloadavg()}})
    if args.compare == "torch":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        res["machine"].update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        params = runners[0].params_numpy()
        compile_model = args.mode == "compile"
        try:
            t = time.perf_counter()
            runners.append(h.TorchRunner(params, cfg, images, labels, args.device, args.dtype,
                                         compile_model=compile_model, sdpa=args.torch_sdpa))
            res["agreement"] = h.compare_outputs(runners[0], runners[1])  # before any update
            runners[-1].step()  # compiles, in the compile process
            res["torch_setup_seconds"] = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - torch.compile may fail on a machine: say why in one line
            if not compile_model:
                raise
            res["torch_compile_error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:300]
            return res
    res["peak"] = probes.measure_matmul_peak(args.dtype, device=args.device)
    times = h.run_rounds(runners, args.rounds, args.steps, args.warmup, args.pause)
    res["frameworks"] = {}
    for r, t in zip(runners, times, strict=True):
        s = h.summarize([x for rnd in t for x in rnd])
        res["frameworks"][r.name] = {"step": s, "images_per_s": args.batch_size / (s["median_ms"] / 1e3),
                                     "gflops": res["flops_train_step"] / (s["median_ms"] / 1e3) / 1e9,
                                     "round_medians_ms": [statistics.median(rnd) * 1e3 for rnd in t]}
    for r, t in zip(runners[1:], times[1:], strict=True):
        ratios = h.round_ratios(times[0], t)
        res[f"ratio_over_{r.name}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                       "rounds": ratios}
    if args.parts:
        parts = h.run_interleaved(runners[:2], "parts", 1, args.steps, args.pause)
        for r, p in zip(runners[:2], parts, strict=True):
            res["frameworks"][r.name]["parts"] = {k: h.summarize([x[k] for x in p]) for k in p[0]}
    if args.profile:
        res["profile_top"] = profile(runners[0], args.steps, args.profile)
    return res


def measure_gpu(args) -> dict:
    """--mode gpu: scratchvit, PyTorch eager and torch.compile in each of --precisions, in this process."""
    import torch

    import scratchvit

    cfg = h.make_config(args)
    images, labels = h.make_batch(cfg, args.batch_size, args.dtype, args.seed)
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    res = {"config": cfg.to_dict(), "batch_size": args.batch_size, "dtype": args.dtype, "device": args.device,
           "precisions": precisions, "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
           "timing": "perf_counter around each step, the device synchronised at the end of the step (and so "
                     "before the next one starts)",
           "machine": {"python": platform.python_version(), "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                       "scratchvit": scratchvit.__version__}, "errors": {}, "setup_seconds": {}}
    runners, params = [], h.bench_params(cfg, args.seed)
    builders = []
    for prec in precisions:
        builders.append((f"scratchvit-{prec}", lambda prec=prec: h.ScratchRunner(
            cfg, images, labels, args.device, args.dtype, args.seed, params=params, precision=prec)))
        for compiled in (False, True):
            if compiled and args.no_torch_compile:
                continue
            builders.append((("torch.compile" if compiled else "pytorch") + f"-{prec}",
                             lambda prec=prec, compiled=compiled: h.TorchRunner(
                                 params, cfg, images, labels, args.device, args.dtype, compile_model=compiled,
                                 sdpa=args.torch_sdpa, amp=prec == "fp16")))
    def failed(label, e):  # a runner that cannot run is reported in one line; the others go on
        res["errors"][label] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:300]
        print(f"{label}: failed: {res['errors'][label]}", flush=True)

    for label, build in builders:
        t = time.perf_counter()
        try:
            r = build()
        except Exception as e:  # noqa: BLE001
            failed(label, e)
            continue
        r.label, res["setup_seconds"][label] = label, time.perf_counter() - t
        runners.append(r)
    by = {r.label: r for r in runners}
    if "scratchvit-fp32" in by and "pytorch-fp32" in by:  # before any update: the same parameters
        res["agreement"] = h.compare_outputs(by["scratchvit-fp32"], by["pytorch-fp32"])
        a = res["agreement"]
        print(f"agreement scratchvit-fp32 / pytorch-fp32: logits max |diff| {a['logits_max_abs_diff']:.3g}, "
              f"grads max rel diff {a['grads_max_rel_diff']:.3g}", flush=True)
    t_start = time.perf_counter()

    def out_of_time(signum, frame):
        raise TimeoutError(f"not warmed up within --time-limit {args.time_limit:g} s")

    def warm(group):  # untimed steps (torch.compile compiles here); a runner that fails leaves the measurement
        for r in list(group):
            t = time.perf_counter()
            left = None if args.time_limit is None else args.time_limit - (t - t_start)
            try:
                if left is not None:
                    if left < 1:
                        raise TimeoutError(f"skipped: --time-limit {args.time_limit:g} s spent before its warm-up")
                    signal.signal(signal.SIGALRM, out_of_time)
                    signal.alarm(max(int(left), 1))
                for _ in range(max(args.warmup, 1)):
                    r.step()
                probes.sync(args.device)
            except Exception as e:  # noqa: BLE001
                failed(r.label, e)
                runners.remove(r)
                group.remove(r)
                continue
            finally:
                signal.alarm(0)
            res["setup_seconds"][r.label] += time.perf_counter() - t
            print(f"{r.label}: built and warmed up in {res['setup_seconds'][r.label]:.1f} s", flush=True)

    def time_group(group):  # interleaved rounds; each runner's first timing kept; same-precision ratios
        times = dict(zip((r.label for r in group),
                         h.run_rounds(group, args.rounds, args.steps, warmup=0, pause=args.pause), strict=True))
        for label, t in times.items():
            if label not in res["frameworks"]:
                s = h.summarize([x for rnd in t for x in rnd])
                res["frameworks"][label] = {"step": s, "images_per_s": args.batch_size / (s["median_ms"] / 1e3),
                                            "round_medians_ms": [statistics.median(rnd) * 1e3 for rnd in t]}
        for label, t in times.items():  # PyTorch's step time over scratchvit's: > 1 means scratchvit is faster
            base = "scratchvit-" + label.rsplit("-", 1)[1]
            if not label.startswith("scratchvit") and base in times:
                ratios = h.round_ratios(times[base], t)
                res["ratios"][f"{label}/{base}"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                    "max": max(ratios)}
        if "scratchvit-fp32" in res["frameworks"]:  # every runner's speed over scratchvit fp32's
            base = res["frameworks"]["scratchvit-fp32"]["step"]["median_ms"]
            res["speed_over_scratchvit_fp32"] = {k: base / v["step"]["median_ms"]
                                                 for k, v in res["frameworks"].items()}
        if args.json:  # what is measured so far stays on disk if a later compile overruns the caller's limit
            _write(Path(args.json), res)

    # Phase 1: scratchvit and PyTorch eager. Phase 2: torch.compile (long warm-ups), timed in rounds with
    # scratchvit's runners again, so its ratios come from rounds of its own.
    res["frameworks"], res["ratios"] = {}, {}
    res["ratios_meaning"] = ("A/B: A's median step time over B's, in rounds where both ran; > 1: B (scratchvit) "
                             "is faster. speed_over_scratchvit_fp32: each runner's images/s over scratchvit fp32's")
    eager = [r for r in runners if not r.label.startswith("torch.compile")]
    compiled = [r for r in runners if r.label.startswith("torch.compile")]
    warm(eager)
    time_group(eager)
    warm(compiled)
    if compiled:
        time_group([r for r in eager if r.label.startswith("scratchvit")] + compiled)
    # scratchvit's and PyTorch eager's runners must run; torch.compile's failure or overrun is reported only
    res["required_failed"] = sorted(k for k in res["errors"] if not k.startswith("torch.compile"))
    print(f"{'runner':22s} {'median ms':>10s} {'images/s':>10s}")
    for label, v in res["frameworks"].items():
        print(f"{label:22s} {v['step']['median_ms']:10.2f} {v['images_per_s']:10.1f}")
    for k, v in res["ratios"].items():
        print(f"{k:40s} {v['median']:.3f}x ({v['min']:.3f}-{v['max']:.3f})  (> 1: scratchvit faster)")
    for k, v in res["errors"].items():
        print(f"{k:22s} {'FAILED' if k in res['required_failed'] else 'not timed'}: {v}")
    return res


def profile(runner, steps: int, top: int) -> str:
    """cProfile of ``steps`` scratchvit steps; the top ``top`` lines by own time, printed and returned."""
    import cProfile
    import io
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    for _ in range(max(1, steps)):
        runner.step()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    print(buf.getvalue())
    return buf.getvalue()


def memory(args) -> dict:
    """One framework in this (fresh) process: its memory probe."""
    setup("cli")
    cfg = h.make_config(args)
    images, labels = h.make_batch(cfg, args.batch_size, args.dtype, args.seed)
    if args._probe == "scratchvit":
        r = h.ScratchRunner(cfg, images, labels, args.device, args.dtype, args.seed)
    else:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        import numpy as np

        params = {k: np.asarray(v, dtype=args.dtype) for k, v in h.bench_params(cfg, args.seed).items()}
        r = h.TorchRunner(params, cfg, images, labels, args.device, args.dtype, sdpa=args.torch_sdpa)
    del images
    return {"framework": args._probe, **probes.memory_probe(r, args.device)}


# ------------------------------------------------------------------------------ subprocesses
def child(argv: list[str], extra: list[str]) -> dict:
    """Run this script in a fresh process with ``argv + extra``; its JSON result, or {"error": ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, *extra, "--json", str(out)],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode or not out.exists():
            return {"error": ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]}
        return json.loads(out.read_text())


def strip(argv: list[str], *flags: str) -> list[str]:
    """``argv`` without the given options and their values (a following token not starting with "-")."""
    out, skip = [], False
    for a in argv:
        if skip and not a.startswith("-"):
            skip = False
        elif a.split("=")[0] in flags:
            skip = "=" not in a
        else:
            skip = False
            out.append(a)
    return out


def line(res: dict) -> str:
    """One summary line of a process's result."""
    if "error" in res:
        return f"failed: {res['error']}"
    if "frameworks" not in res:
        return f"{res['process']['mode']:7s} torch.compile failed: {res.get('torch_compile_error')}"
    fw = res["frameworks"]
    out = f"{res['process']['mode']:7s}" + "".join(f" | {n} {v['images_per_s']:8.2f} img/s" for n, v in fw.items())
    for n in fw:
        if f"ratio_over_{n}" in res:
            r = res[f"ratio_over_{n}"]
            out += f" | vs {n} {r['median']:.3f}x ({r['min']:.3f}-{r['max']:.3f})"
    return out + f" | load {res['machine']['load_average'][0]:.2f}"


def run(argv: list[str], args) -> dict:
    """The measurement the options ask for: in this process, or one fresh process per mode."""
    mode = args.mode or ("both" if args.compare else "cli")
    if mode == "gpu":
        res = measure_gpu(args)
    elif mode != "both":
        args.mode = mode
        res = measure(args)
    else:
        sub = strip(argv, "--mode", "--json", "--suite", "--memory")
        modes = ("plain", "cli") + (() if args.no_torch_compile or not args.compare else ("compile",))
        res = {"modes": {m: child(sub, ["--mode", m]) for m in modes}}
    if args.memory:
        base = strip(argv, "--mode", "--json", "--suite", "--memory", "--profile", "--parts")
        res["memory"] = {fw: child(base, ["--_probe", fw]) for fw in ("scratchvit", "torch")[:1 + bool(args.compare)]}
    return res


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    h.set_thread_env(args.threads)  # before NumPy is imported
    if args._probe:
        res = memory(args)
    elif args.suite:
        res = {}
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"python bench/train_step.py {' '.join(argv)}"]
        for name, (geometry, steps) in SUITES[args.suite].items():
            sub = strip(argv, "--suite", "--out-dir", "--json", "--steps") + geometry + ["--steps", str(steps)]
            sub += [] if "--compare" in sub else ["--compare", "torch"]
            res[name] = run(sub, build_parser().parse_args(sub))
            text = [f"{name}: python bench/train_step.py {' '.join(sub)}"] + [
                line(r) for r in res[name].get("modes", {"": res[name]}).values()]
            print("\n".join(text), flush=True)
            lines += text
            _write(out_dir / f"train_step_{args.suite}_{name}.json", res[name])
        _write(out_dir / f"train_step_{args.suite}_summary.txt", "\n".join(lines) + "\n")
    else:
        res = run(argv, args)
        for r in res.get("modes", {"": res}).values() if args.mode != "gpu" else ():  # gpu: printed already
            if "agreement" in r:
                a = r["agreement"]
                print(f"agreement: logits max |diff| {a['logits_max_abs_diff']:.3g}, "
                      f"grads max rel diff {a['grads_max_rel_diff']:.3g}")
            print(line(r))
        for fw, m in res.get("memory", {}).items():
            print(f"memory {fw}: " + (", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in m.items()
                                               if k.endswith("bytes")) or str(m)))
    if args.json:
        _write(Path(args.json), res)
    return res


def _write(path: Path, data) -> None:
    """Write JSON (or text) atomically: a temporary file in the same folder, then a rename."""
    from scratchvit.files import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, data if isinstance(data, str) else json.dumps(data, indent=2, default=float))


if __name__ == "__main__":
    sys.exit(1 if main().get("required_failed") else 0)  # --mode gpu: a scratchvit or PyTorch eager runner failed
