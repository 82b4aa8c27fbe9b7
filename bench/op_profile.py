"""Where a scratchvit training step's time goes: each op's forward and backward, timed call by call.

    python bench/op_profile.py --threads 1                       # the suite's three geometries
    python bench/op_profile.py --threads 1 --geometry p7_d128_gap_b128 --repeats 20
    python bench/op_profile.py --threads 2 --model R50+ViT-B_16 --batch 8 --repeats 3   # a named model at 224 px
    python bench/op_profile.py --threads 1 --preset fashion-mnist --batch 128          # a preset's model
    python bench/op_profile.py --threads 1 --plain                # every op in its plain (array API) form

``--plain`` makes every op's public function take its plain form on NumPy too (``fast_form`` answers
False in every op module). ``--compare-forms`` times both in one process, alternating for ``--rounds``
rounds, and prints per op the median milliseconds of each form and what the NumPy fast form saves, as
a share of the op's plain-form time (a fast form stays where it saves at least 5%):

    python bench/op_profile.py --threads 1 --compare-forms --rounds 3 --geometry p7_d128_gap_b128

Runs ``ViT.forward(keep_cache=True)``, the softmax cross-entropy and ``ViT.backward`` on one random
batch (the op-by-op path on the whole batch; ``loss_and_grads`` splits the batch over threads instead,
so use one thread for shares that add up), with every ``scratchvit.ops.*_forward`` / ``*_backward`` wrapped by a timer.
Prints, per geometry, milliseconds per forward + backward and each op's share of it; the rest
(residual adds, position embedding, class token) is "outside the ops".
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/op_profile.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `bench` imports as a package

from bench.harness import SUITE_GEOMETRIES, geometry_config, set_thread_env  # noqa: E402


def plain_forms_only():
    """Make every op of scratchvit.ops take its plain form: each op module's ``fast_form`` answers False.
    Returns a function that undoes it."""
    import importlib
    import pkgutil

    from scratchvit import ops

    patched = []
    for info in pkgutil.iter_modules(ops.__path__):
        module = importlib.import_module(f"scratchvit.ops.{info.name}")
        if hasattr(module, "fast_form"):
            patched.append((module, module.fast_form))
            module.fast_form = lambda xp, *arrays: False

    def undo():
        for module, fn in patched:
            module.fast_form = fn
    return undo


def profile(cfg, batch: int, repeats: int) -> tuple[float, dict]:
    """(seconds per forward + backward, {op name: seconds per forward + backward}) of a ViTConfig."""
    import numpy as np

    import scratchvit as sv
    from scratchvit import ops

    model = sv.ViT(cfg, seed=0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, cfg.image_size, cfg.image_size, 3), np.float32)
    spent = collections.defaultdict(float)
    real = {n: getattr(ops, n) for n in ops.__all__ if n.endswith(("_forward", "_backward"))}

    def timed(name, fn):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t
        return call

    labels = rng.integers(0, cfg.num_classes, batch)

    def step():
        logits, caches = model.forward(images, keep_cache=True)
        _, ce = ops.softmax_cross_entropy_forward(logits, labels)
        model.backward(ops.softmax_cross_entropy_backward(ce), caches)

    try:
        for name, fn in real.items():
            setattr(ops, name, timed(name, fn))
        step()  # warm-up
        spent.clear()
        t = time.perf_counter()
        for _ in range(repeats):
            step()
        total = (time.perf_counter() - t) / repeats
    finally:
        for name, fn in real.items():
            setattr(ops, name, fn)
    return total, {k: v / repeats for k, v in spent.items()}


def compare_forms(name: str, cfg, batch: int, repeats: int, rounds: int, threads) -> None:
    """Print, per op, the median ms per forward + backward of the fast and the plain forms over ``rounds``
    alternating rounds, and the fast form's saving as a share of the plain form's time."""
    import statistics

    runs = {"fast": [], "plain": []}
    for _ in range(rounds):
        runs["fast"].append(profile(cfg, batch, repeats))
        undo = plain_forms_only()
        try:
            runs["plain"].append(profile(cfg, batch, repeats))
        finally:
            undo()

    def median(form, op=None):
        return statistics.median(t if op is None else s.get(op, 0.0) for t, s in runs[form]) * 1e3

    print(f"\n{name}: forward + backward {median('fast'):.1f} ms with the fast forms, {median('plain'):.1f} ms "
          f"plain (medians of {rounds} rounds, threads {threads or 'default'})")
    print(f"  {'op':32s} {'fast ms':>9s} {'plain ms':>9s}  fast form saves")
    ops_seen = sorted({op for _, s in runs["fast"] for op in s}, key=lambda op: -median("plain", op))
    for op in ops_seen:
        fast, plain = median("fast", op), median("plain", op)
        saved = 100 * (plain - fast) / plain if plain else 0.0
        print(f"  {op:32s} {fast:9.3f} {plain:9.3f}  {saved:6.1f}%")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="BLAS and scratchvit threads (default: all cores)")
    p.add_argument("--geometry", choices=list(SUITE_GEOMETRIES), action="append",
                   help="one of the suite's geometries (repeatable; default: all three)")
    p.add_argument("--model", action="append",
                   help="a name from scratchvit.configs.MODELS at its own size, 1000 classes, instead (repeatable; "
                   "e.g. R50+ViT-B_16, a hybrid)")
    p.add_argument("--preset", action="append",
                   help="the model of a training preset (scratchvit/presets; repeatable; e.g. fashion-mnist)")
    p.add_argument("--batch", type=int, default=8, help="images per batch with --model or --preset (default 8)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--plain", action="store_true", help="every op in its plain (array API) form, NumPy too")
    p.add_argument("--compare-forms", action="store_true",
                   help="time the fast and the plain forms alternately; print what each fast form saves")
    p.add_argument("--rounds", type=int, default=3, help="alternations with --compare-forms (default 3)")
    p.add_argument("--representation-size", type=int, default=None,
                   help="add the pre-logits layer (dense + tanh) of this width, as the official ImageNet-21k models")
    args = p.parse_args(argv)
    set_thread_env(args.threads)  # before NumPy loads OpenBLAS and scratchvit sizes its pool
    named = (args.model or []) + (args.preset or [])
    runs = [(name, None) for name in args.geometry or ([] if named else SUITE_GEOMETRIES)]
    runs += [(name, args.batch) for name in args.model or []]
    runs += [(f"preset:{name}", args.batch) for name in args.preset or []]
    if args.plain:
        plain_forms_only()
    for name, model_batch in runs:
        if model_batch is None:
            cfg, batch = geometry_config(name)
        elif name.startswith("preset:"):
            from scratchvit import settings, train

            s, _ = settings.resolve_settings(["--config", name[len("preset:"):]])
            cfg, batch = train.model_config(s, num_classes=10), model_batch
            name = f"{name[len('preset:'):]} batch {batch}"
        else:
            import scratchvit as sv

            cfg, batch = sv.get_config(name, num_classes=1000, dropout_rate=0.0), model_batch
            name = f"{name} batch {batch}"
        if args.representation_size:
            cfg = cfg.replace(representation_size=args.representation_size)
            name = f"{name}, pre-logits {args.representation_size}"
        if args.compare_forms:
            compare_forms(name, cfg, batch, args.repeats, args.rounds, args.threads)
            continue
        total, spent = profile(cfg, batch, args.repeats)
        forms = "plain forms only" if args.plain else "fast forms where they apply"
        print(f"\n{name}: forward + backward {total * 1e3:.1f} ms (threads {args.threads or 'default'}; {forms})")
        for op, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
            print(f"  {op:32s} {sec * 1e3:8.2f} ms  {100 * sec / total:5.1f}%")
        print(f"  {'(outside the ops)':32s} {(total - sum(spent.values())) * 1e3:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
