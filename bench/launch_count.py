"""Array operations (GPU kernel launches) of one training step, counted on array-api-strict's Device("device1").

    python bench/launch_count.py                  # ViT-B/16 (batch 2) and the Quickstart model (fashion-mnist)
    python bench/launch_count.py --model ViT-Ti_16 --num-layers 12 --hidden-size 64 --batch-size 4

On a GPU every array operation is a kernel launch (or at least a trip through Python and the array
library); CuPy runs them one by one. The count is a property of the code, not of the machine, so it is
taken here without a GPU: every function of the ``array_api_strict`` namespace that makes or reads an
array (not the dtype and flag helpers) and every operator of its array class (arithmetic, comparison,
in-place, reflected, ``[]`` and ``[] =``, ``.T``/``.mT``, ``to_device``) is wrapped and counted, only the
outermost call of a nest (array-api-strict's own internal calls are not ours). One
``scratchvit.step.train_step`` with global-norm clipping is counted, after one untimed step (so that
AdamW's state is not all zeros; the count does not depend on values). Each operation is charged to the
part of the step it runs in:

* ``forward``: ``ViT._forward`` (patch embedding to logits) and the loss;
* ``backward``: ``ViT.backward``;
* ``gather``: copying the gradients into the flat gradient buffer (``scratchvit.flat.Layout.gather``;
  absent before the flat buffers);
* ``clipping``: ``optim.global_norm`` and ``optim.clip_by_global_norm``;
* ``update``: the optimiser's ``update``;
* ``other``: the rest of the step (the batch to the device, the one host read, the accumulation).

Prints a table of counts per part for each model and optimiser (SGD, AdamW). The same counter is used
by ``tests/test_launch_count.py``, which bounds the count.
"""
from __future__ import annotations

import argparse
import collections
import functools
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/launch_count.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `bench` imports as a package

# Namespace attributes that are not array operations: dtype and flag helpers, constants, the Device class.
NOT_OPS = {"finfo", "iinfo", "isdtype", "result_type", "can_cast", "broadcast_shapes", "get_array_api_strict_flags",
           "set_array_api_strict_flags", "reset_array_api_strict_flags", "ArrayAPIStrictFlags", "Device",
           "ModuleType", "__array_api_version__"}
OPERATORS = ("abs", "add", "and", "eq", "floordiv", "ge", "getitem", "gt", "invert", "le", "lshift", "lt", "matmul",
             "mod", "mul", "ne", "neg", "or", "pos", "pow", "rshift", "setitem", "sub", "truediv", "xor")
REFLECTED = ("add", "and", "floordiv", "lshift", "matmul", "mod", "mul", "or", "pow", "rshift", "sub", "truediv", "xor")
IN_PLACE = REFLECTED
PARTS = ("forward", "backward", "gather", "clipping", "update", "other")


class OpCounter:
    """Counts array operations on array_api_strict while active (a context manager), per part of the step.

    Attributes:
        counts: Counter part -> operations; ``by_op``: Counter (part, op name) -> operations.
    """

    def __init__(self):
        import array_api_strict as xs

        self.xs = xs
        self.array = type(xs.ones(1))
        self.counts = collections.Counter()
        self.by_op = collections.Counter()
        self._depth = 0
        self._part = ["other"]
        self._restore = []

    def _counted(self, name, fn):
        @functools.wraps(fn)
        def call(*a, **k):
            if self._depth == 0:
                self.counts[self._part[-1]] += 1
                self.by_op[self._part[-1], name] += 1
            self._depth += 1
            try:
                return fn(*a, **k)
            finally:
                self._depth -= 1
        return call

    def _patch(self, owner, attr, new):
        self._restore.append((owner, attr, owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)))
        setattr(owner, attr, new)

    def charge(self, owner, attr: str, part: str) -> None:
        """Charge the operations made inside ``owner.attr`` (a function or method) to ``part``; nothing if absent."""
        fn = getattr(owner, attr, None)
        if fn is None:
            return

        @functools.wraps(fn)
        def call(*a, **k):
            self._part.append(part)
            try:
                return fn(*a, **k)
            finally:
                self._part.pop()
        self._patch(owner, attr, call)

    def __enter__(self):
        xs, A = self.xs, self.array
        for name in dir(xs):
            fn = getattr(xs, name)
            if name.startswith("_") or name in NOT_OPS or not callable(fn) or isinstance(fn, type):
                continue
            self._patch(xs, name, self._counted(name, fn))
        names = [f"__{n}__" for n in OPERATORS] + [f"__r{n}__" for n in REFLECTED] + [f"__i{n}__" for n in IN_PLACE]
        for name in names + ["to_device"]:
            if name in A.__dict__:
                self._patch(A, name, self._counted(name.strip("_"), A.__dict__[name]))
        for name in ("T", "mT"):  # transposes are properties
            prop = A.__dict__[name]
            self._patch(A, name, property(self._counted(name, prop.fget)))
        return self

    def __exit__(self, *exc):
        for owner, attr, old in reversed(self._restore):
            setattr(owner, attr, old)
        self._restore.clear()
        return False


def count_train_step(model, optimizer, opt_state, images, labels, grad_clip=1.0, accum_steps=1, lr=1e-3):
    """Array operations of one ``scratchvit.step.train_step`` of ``model`` (device "strict"), per part.

    ``images``, ``labels``: the host (NumPy) batch. One step runs first, uncounted. Returns (Counter part ->
    operations, with "total"; Counter (part, operation name) -> operations)."""
    import importlib

    from scratchvit import optim, step
    from scratchvit.model import ViT

    def run():
        return step.train_step(model, optimizer, opt_state, images, labels, lr, grad_clip=grad_clip,
                               accum_steps=accum_steps)

    run()
    with OpCounter() as c:
        c.charge(ViT, "_forward", "forward")
        c.charge(ViT, "backward", "backward")
        c.charge(ViT, "part_loss_and_grads", "forward")  # the loss; _forward and backward inside charge themselves
        for mod in (optim, step):
            c.charge(mod, "global_norm", "clipping")
            c.charge(mod, "clip_by_global_norm", "clipping")
        c.charge(type(optimizer), "update", "update")
        try:
            flat = importlib.import_module("scratchvit.flat")
            c.charge(flat.Layout, "gather", "gather")
        except ImportError:  # a checkout from before the flat buffers
            pass
        run()
    counts = collections.Counter({p: c.counts.get(p, 0) for p in PARTS})
    counts["total"] = sum(c.counts.values())
    return counts, c.by_op


def strict_model(config, seed=0):
    """A float64 ViT of ``config`` on array-api-strict's Device("device1") (the flag set to the 2023.12 standard)."""
    import array_api_strict as xs

    import scratchvit as sv

    xs.set_array_api_strict_flags(api_version="2023.12")
    return sv.ViT(config, seed=seed, device="strict", dtype="float64")


def count_model(config, batch: int, optimizer: str, grad_clip=1.0, seed=0):
    """(counts per part, counts per (part, op)) of one train_step of ``config`` at ``batch`` images."""
    import numpy as np

    from scratchvit import optim

    model = strict_model(config, seed)
    opt = optim.make_optimizer(optimizer)
    state = opt.init(getattr(model, "flat", model.params))
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (batch, config.image_size, config.image_size, 3))
    labels = rng.integers(0, config.num_classes, batch)
    return count_train_step(model, opt, state, images, labels, grad_clip)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="one geometry (scratchvit.configs name or preset); default: "
                   "ViT-B_16 at batch 2 and the fashion-mnist preset's model at batch 4")
    for flag in ("num-layers", "hidden-size", "mlp-dim", "num-heads", "image-size", "patch-size", "num-classes"):
        p.add_argument(f"--{flag}", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--by-op", action="store_true", help="also print the ten most frequent operations per part")
    p.add_argument("--repo", type=Path, default=None, help="count the scratchvit of this checkout (default: this one)")
    args = p.parse_args(argv)
    if args.repo is not None:  # before scratchvit is first imported
        sys.path.insert(0, str(args.repo.resolve()))

    import warnings

    import scratchvit as sv
    from scratchvit.settings import resolve_settings
    from scratchvit.train import model_config

    warnings.filterwarnings("ignore", category=UserWarning)  # array-api-strict's notes on the standard's version
    if args.model is None:
        preset, _ = resolve_settings(["--config", "fashion-mnist-vit"])
        cases = [("ViT-B_16 (224 px, 1000 classes), batch 2", sv.get_config("ViT-B_16", num_classes=1000), 2),
                 ("fashion-mnist-vit preset, batch 128", model_config(preset, num_classes=10), preset.batch_size)]
    else:
        fields = {k: getattr(args, k) for k in ("num_layers", "hidden_size", "mlp_dim", "num_heads", "image_size",
                                                "patch_size", "num_classes") if getattr(args, k) is not None}
        cases = [(args.model, sv.get_config(args.model, **fields), args.batch_size)]
    print(f"scratchvit from {Path(sv.__file__).parent}")
    print(f"{'model':42s} {'optimizer':9s} " + " ".join(f"{p:>9s}" for p in PARTS) + f" {'total':>7s}")
    for name, cfg, batch in cases:
        for opt in ("sgd", "adamw"):
            counts, by_op = count_model(cfg, batch, opt)
            print(f"{name:42s} {opt:9s} " + " ".join(f"{counts[p]:9d}" for p in PARTS) + f" {counts['total']:7d}",
                  flush=True)
            if args.by_op:
                for part in PARTS:
                    top = sorted(((n, k) for (q, k), n in by_op.items() if q == part), reverse=True)[:10]
                    print(f"    {part}: " + ", ".join(f"{k} {n}" for n, k in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
