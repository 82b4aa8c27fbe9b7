import builtins
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

REFERENCE = TESTS / "reference"


def load_reference(name):
    """A reference case computed by the official vit_jax model in float64 (see reference/README.md)."""
    d = np.load(REFERENCE / f"shared_{name}.npz")
    params = {k[len("params/"):]: d[k] for k in d.files if k.startswith("params/")}
    grads = {k[len("grads/"):]: d[k] for k in d.files if k.startswith("grads/")}
    return params, grads, d


@pytest.fixture(params=["token", "prelogits"])
def reference_case(request):
    return load_reference(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """For the data tests: an empty cache, no system copies, no apt-get, no network."""
    from data_helpers import no_network  # noqa: PLC0415

    from scratchvit.data import idx, sources  # noqa: PLC0415

    monkeypatch.setenv("SCRATCHVIT_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion-mnist", [])
    monkeypatch.setattr(idx, "APT_PACKAGES", {})
    monkeypatch.setattr(sources, "_urlopen", no_network)


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Importing matplotlib fails, as where the [plot] extra is not installed."""
    real_import = builtins.__import__

    def importing(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", importing)
