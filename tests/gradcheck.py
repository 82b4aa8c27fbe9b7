"""Central finite differences for the gradient checks (float64 throughout)."""
from __future__ import annotations

import numpy as np

EPS = 1e-6


def numerical_grad(f, x, indices=None, eps=EPS):
    """d f / d x by central differences, where f() -> float reads ``x`` (modified in place and restored).

    ``indices``: flat indices to probe (default: every element). Returns (indices, values).
    """
    flat = x.reshape(-1)
    if indices is None:
        indices = np.arange(flat.size)
    out = np.empty(len(indices))
    for j, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        out[j] = (fp - fm) / (2 * eps)
    return indices, out


def relative_error(analytic, numeric):
    """max |analytic - numeric| / max |numeric|: the error relative to the tensor's largest entry."""
    scale = np.abs(numeric).max()
    return np.abs(analytic - numeric).max() / scale


def sample_indices(size, k, rng):
    """All indices if size <= k, else k random distinct ones."""
    return np.arange(size) if size <= k else rng.choice(size, k, replace=False)


def check_model_gradients(model, images, labels, rng, samples: int, floor: float, tol: float = 1e-6) -> None:
    """Every parameter's (and the images') gradient of ``model.loss_and_grads`` against central differences at
    ``samples`` random entries each, relative error at most ``tol``. The attention key bias is exactly zero in
    exact arithmetic (softmax ignores a score added to a whole row, and q . b_key is one): both sides must be
    ~0. Every other numerical gradient must exceed ``floor`` somewhere, or the check would be vacuous."""
    _, grads = model.loss_and_grads(images, labels, need_dinput=True)

    def loss():
        return model.loss_and_grads(images, labels)[0]

    targets = dict(model.params, images=images)
    assert set(grads) == set(targets)
    for name, x in targets.items():
        idx = sample_indices(x.size, samples, rng)
        _, num = numerical_grad(loss, x, idx)
        ana = grads[name].reshape(-1)[idx]
        if name.endswith("key/bias"):
            assert np.abs(ana).max() < 1e-12 and np.abs(num).max() < 1e-8, name
            continue
        assert np.abs(num).max() > floor, f"{name}: numerical gradient ~0, the check would be vacuous"
        err = relative_error(ana, num)
        assert err <= tol, f"{name}: relative error {err:.2e}"
