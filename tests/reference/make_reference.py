"""Regenerate tests/reference/shared_*.npz with Google's official ViT (vit_jax), in float64.

NOT RUN IN THIS REPOSITORY. scratchvit's own environment has no JAX, Flax or vit_jax; this script
was written from the keys, shapes and statistics of the committed files (see README.md here) and the
official ``vit_jax/models_vit.py`` (Linen version). It documents how the committed cases were made
and lets anyone with JAX make new ones; the tests compare scratchvit against whatever the files
hold, so regenerated files serve equally (the random draws differ from the committed ones).

Setup (CPU is enough; a few seconds per case):

    git clone https://github.com/google-research/vision_transformer
    pip install -r vision_transformer/vit_jax/requirements.txt   # jax, flax, ml_collections, ...
    PYTHONPATH=vision_transformer:. python tests/reference/make_reference.py [--out tests/reference]

What each case holds (keys as README.md documents):
  params/<name>  every parameter, official pre-Linen names, in the official order, float64.
                 Kernels of the patch embedding, attention, MLP and pre-logits keep the official
                 initialisation (``model.init``); every other leaf (biases, layer-norm scales, class
                 token, position embedding, head) gets normal(0, 0.05) noise added, so that no
                 gradient is trivially zero (the official head starts at zero).
  images         (B, H, W, 3) uniform in [-1, 1];  labels (B,) int64.
  logits         ``VisionTransformer.apply(..., train=False)`` (eval mode, no dropout), float64.
  loss           mean softmax cross-entropy of logits against labels.
  grads/<name>   ``jax.grad`` of that loss for every parameter (keys in flatten order).
  meta           JSON string: image, patch, hidden, mlp, heads, layers, classes, classifier,
                 representation_size, batch.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CASES = {
    "shared_token": dict(image=32, patch=8, hidden=32, mlp=64, heads=4, layers=2, classes=10, classifier="token",
                         representation_size=None, batch=3),
    "shared_prelogits": dict(image=48, patch=16, hidden=24, mlp=40, heads=2, layers=3, classes=4,
                             classifier="token", representation_size=16, batch=2),
}
NOISE = 0.05
KEPT_KERNELS = ("embedding/kernel", "pre_logits/kernel", "/query/kernel", "/key/kernel", "/value/kernel",
                "/out/kernel", "/Dense_0/kernel", "/Dense_1/kernel")


def build_model(meta):
    """The official VisionTransformer, its encoder blocks computing in float64."""
    import jax.numpy as jnp  # noqa: PLC0415
    import ml_collections  # noqa: PLC0415
    from vit_jax import models_vit  # noqa: PLC0415

    # Encoder1DBlock (and the MlpBlock/attention/LayerNorm it builds with dtype=self.dtype) defaults
    # to float32; Encoder looks the class up at call time, so a float64 subclass replaces it.
    class Encoder1DBlock64(models_vit.Encoder1DBlock):
        dtype: jnp.dtype = jnp.float64

    models_vit.Encoder1DBlock = Encoder1DBlock64
    return models_vit.VisionTransformer(
        num_classes=meta["classes"],
        patches=ml_collections.ConfigDict({"size": (meta["patch"], meta["patch"])}),
        transformer=dict(mlp_dim=meta["mlp"], num_heads=meta["heads"], num_layers=meta["layers"],
                         attention_dropout_rate=0.0, dropout_rate=0.0),
        hidden_size=meta["hidden"], representation_size=meta["representation_size"],
        classifier=meta["classifier"])


def make_case(meta, seed):
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    from flax import traverse_util  # noqa: PLC0415

    from scratchvit import get_config, param_shapes  # the official order of the names

    rng = np.random.default_rng(seed)
    images = rng.uniform(-1.0, 1.0, (meta["batch"], meta["image"], meta["image"], 3))
    labels = rng.integers(0, meta["classes"], meta["batch"]).astype(np.int64)
    model = build_model(meta)
    variables = model.init(jax.random.PRNGKey(seed), jnp.asarray(images), train=False)
    flat = traverse_util.flatten_dict(jax.device_get(variables["params"]), sep="/")
    params = {}
    for name, v in flat.items():
        v = np.asarray(v, dtype=np.float64)
        if not name.endswith(KEPT_KERNELS):
            v = v + rng.normal(0.0, NOISE, v.shape)
        params[name] = v

    def loss_fn(p):
        logits = model.apply({"params": traverse_util.unflatten_dict(p, sep="/")}, jnp.asarray(images), train=False)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(labels)[:, None], axis=1)), logits

    p64 = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in params.items()}
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(p64)

    config = get_config("ViT-Ti_16", image_size=meta["image"], patch_size=meta["patch"],
                        hidden_size=meta["hidden"], num_layers=meta["layers"], num_heads=meta["heads"],
                        mlp_dim=meta["mlp"], num_classes=meta["classes"], classifier=meta["classifier"],
                        representation_size=meta["representation_size"])
    order = list(param_shapes(config))
    if sorted(order) != sorted(params):
        raise RuntimeError(f"vit_jax names differ from scratchvit's: {sorted(set(order) ^ set(params))}")
    out = {f"params/{k}": params[k] for k in order}
    out.update({f"grads/{k}": np.asarray(grads[k], dtype=np.float64) for k in sorted(grads)})
    out.update(images=images, labels=labels, logits=np.asarray(logits, dtype=np.float64),
               loss=np.asarray(loss, dtype=np.float64), meta=np.array(json.dumps(meta)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent), help="folder for the .npz files")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import jax  # noqa: PLC0415

    jax.config.update("jax_enable_x64", True)  # float64 everywhere (set before any array is made)
    for i, (name, meta) in enumerate(CASES.items()):
        case = make_case(meta, args.seed + i)
        if case["logits"].dtype != np.float64:
            raise RuntimeError("logits are not float64: is jax_enable_x64 set?")
        path = Path(args.out) / f"{name}.npz"
        np.savez(path, **case)
        print(f"wrote {path}: loss {float(case['loss']):.6f}, {sum(k.startswith('grads/') for k in case)} gradients")


if __name__ == "__main__":
    main()
