"""Official .npz checkpoints: round trip, Linen names, fine-tuning adaptation, position-embedding resize, bad files."""
import os

import numpy as np
import pytest

import scratchvit as sv
from scratchvit.checkpoint import LINEN_BLOCK_NAMES, resize_posemb
from scratchvit.params import POSEMB


def small_model(**kw):
    cfg = sv.get_config("ViT-Ti_16", **{**dict(image_size=32, patch_size=8, hidden_size=16, num_heads=2,
                                                num_layers=3, mlp_dim=24, num_classes=10), **kw})
    return sv.ViT(cfg, seed=0, dtype="float64")


def test_round_trip_is_exact(tmp_path, rng):
    m = small_model(representation_size=6)
    for k in m.params:
        m.params[k] += rng.standard_normal(m.params[k].shape)
    path = tmp_path / "ckpt.npz"
    sv.save_checkpoint(path, m.params, dtype=None)
    m2 = sv.ViT.from_checkpoint(path, dtype="float64")
    assert m2.config == m.config
    assert list(m2.params) == list(m.params)
    assert all(np.array_equal(m2.params[k], m.params[k]) for k in m.params)
    images = rng.uniform(-1, 1, (2, 32, 32, 3))
    np.testing.assert_array_equal(m2.forward(images), m.forward(images))


def test_saved_file_has_official_layout(tmp_path):
    m = small_model()
    path = tmp_path / "ckpt.npz"
    sv.save_checkpoint(path, m.params)
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == set(m.params)
        assert all(f[k].dtype == np.float32 and f[k].shape == m.params[k].shape for k in f.files)
    assert "Transformer/encoderblock_2/MultiHeadDotProductAttention_1/query/kernel" in m.params
    assert [p for p in os.listdir(tmp_path)] == ["ckpt.npz"]  # no temporary file left behind


def test_official_reference_loads_through_from_checkpoint(tmp_path, reference_case):
    params, _, d = reference_case
    path = tmp_path / "ref.npz"
    np.savez(path, **params)
    model = sv.ViT.from_checkpoint(path, dtype="float64")
    np.testing.assert_allclose(model.forward(d["images"]), d["logits"], atol=1e-10, rtol=0)


def test_linen_names_load_to_the_same_model(tmp_path, rng):
    m = small_model()
    inverse = {v: k for k, v in LINEN_BLOCK_NAMES.items()}
    linen = {}
    for k, v in m.params.items():
        parts = k.split("/")
        if parts[1:2] and parts[1].startswith("encoderblock_"):
            parts[2] = inverse[parts[2]]
        linen["params/" + "/".join(parts)] = v
    assert "params/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in linen
    np.savez(tmp_path / "linen.npz", **linen)
    sv.save_checkpoint(tmp_path / "official.npz", m.params, dtype=None)
    a = sv.ViT.from_checkpoint(tmp_path / "linen.npz", dtype="float64")
    b = sv.ViT.from_checkpoint(tmp_path / "official.npz", dtype="float64")
    assert a.config == b.config
    assert all(np.array_equal(a.params[k], b.params[k]) for k in b.params)


def test_many_blocks_are_ordered_numerically(tmp_path):
    """encoderblock_10 sorts before encoderblock_2 as a string; the loader must not care."""
    m = small_model(num_layers=12)
    items = sorted(m.params.items())  # string order, as a file might hold them
    np.savez(tmp_path / "deep.npz", **dict(items))
    m2 = sv.ViT.from_checkpoint(tmp_path / "deep.npz", dtype="float64")
    assert m2.config.num_layers == 12
    assert list(m2.params) == list(m.params)


def test_new_head_for_fine_tuning_drops_pre_logits(tmp_path):
    m = small_model(representation_size=6)
    m.params["head/kernel"][...] = 1.0  # a trained head (a fresh one is zeros)
    sv.save_checkpoint(tmp_path / "c.npz", m.params)
    ft = sv.ViT.from_checkpoint(tmp_path / "c.npz", num_classes=3)
    assert ft.config.num_classes == 3 and ft.config.representation_size is None
    assert "pre_logits/kernel" not in ft.params
    assert ft.params["head/kernel"].shape == (16, 3) and not ft.params["head/kernel"].any()
    same = sv.ViT.from_checkpoint(tmp_path / "c.npz", num_classes=10)  # same count: head kept
    assert same.config.representation_size == 6
    np.testing.assert_array_equal(same.params["head/kernel"], m.params["head/kernel"])
    # fine-tuning (new_head, as vit_jax load_pretrained): a zero head and no pre-logits, same count or not
    for n in (None, 10):
        fresh = sv.ViT.from_checkpoint(tmp_path / "c.npz", num_classes=n, new_head=True)
        assert fresh.config.num_classes == 10 and fresh.config.representation_size is None
        assert "pre_logits/kernel" not in fresh.params
        assert not fresh.params["head/kernel"].any() and not fresh.params["head/bias"].any()
        np.testing.assert_array_equal(fresh.params["Transformer/encoder_norm/scale"],
                                      m.params["Transformer/encoder_norm/scale"])


def test_posemb_resize_matches_scipy_zoom(rng):
    scipy_ndimage = pytest.importorskip("scipy.ndimage")  # the reference only; the rest of this file needs no SciPy
    for classifier, n_tok in (("token", 1), ("gap", 0)):
        for old, new in ((4, 6), (7, 3), (14, 24), (3, 1), (2, 2)):
            posemb = rng.standard_normal((1, n_tok + old * old, 5))
            out = resize_posemb(posemb, n_tok + new * new, classifier)
            grid = posemb[0, n_tok:].reshape(old, old, 5)
            ref = scipy_ndimage.zoom(grid, (new / old, new / old, 1), order=1)
            assert out.shape == (1, n_tok + new * new, 5)
            np.testing.assert_array_equal(out[:, :n_tok], posemb[:, :n_tok])  # cls row untouched
            np.testing.assert_allclose(out[0, n_tok:].reshape(new, new, 5), ref, rtol=1e-12, atol=1e-12)


def test_load_at_new_image_size(tmp_path, rng):
    m = small_model()
    sv.save_checkpoint(tmp_path / "c.npz", m.params, dtype=None)
    big = sv.ViT.from_checkpoint(tmp_path / "c.npz", image_size=48, num_classes=4, dtype="float64")
    assert big.config.image_size == 48 and big.params[POSEMB].shape == (1, 37, 16)
    assert big.forward(rng.uniform(-1, 1, (1, 48, 48, 3))).shape == (1, 4)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        sv.ViT.from_checkpoint(tmp_path / "c.npz", image_size=50)


# ---------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        sv.ViT.from_checkpoint(tmp_path / "nope.npz")


def test_not_an_npz(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"abc")
    with pytest.raises(ValueError, match="must be an .npz"):
        sv.ViT.from_checkpoint(tmp_path / "w.pt")
    with pytest.raises(ValueError, match="must end in .npz"):
        sv.save_checkpoint(tmp_path / "w.pt", small_model().params)


def test_truncated_file(tmp_path):
    sv.save_checkpoint(tmp_path / "c.npz", small_model().params)
    data = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        sv.ViT.from_checkpoint(tmp_path / "t.npz")


def test_pickles_are_never_loaded(tmp_path):
    p = dict(small_model().params)
    p["head/bias"] = np.array([object()] * 10, dtype=object)
    np.savez(tmp_path / "p.npz", **p)
    with pytest.raises(ValueError, match="not a readable"):
        sv.ViT.from_checkpoint(tmp_path / "p.npz")


def test_missing_and_extra_parameters(tmp_path):
    p = dict(small_model().params)
    del p["Transformer/encoderblock_1/LayerNorm_2/scale"]
    np.savez(tmp_path / "missing.npz", **p)
    with pytest.raises(ValueError, match="missing.*encoderblock_1/LayerNorm_2/scale"):
        sv.ViT.from_checkpoint(tmp_path / "missing.npz")
    p = dict(small_model().params, **{"Transformer/encoderblock_0/extra/kernel": np.zeros(3)})
    np.savez(tmp_path / "extra.npz", **p)
    with pytest.raises(ValueError, match="unexpected.*extra/kernel"):
        sv.ViT.from_checkpoint(tmp_path / "extra.npz")


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
    p = dict(small_model().params)
    p["Transformer/encoderblock_2/MlpBlock_3/Dense_1/kernel"] = np.zeros((24, 15))
    np.savez(tmp_path / "bad.npz", **p)
    with pytest.raises(ValueError, match=r"'Transformer/encoderblock_2/MlpBlock_3/Dense_1/kernel' has shape "
                                         r"\(24, 15\), expected \(24, 16\)"):
        sv.ViT.from_checkpoint(tmp_path / "bad.npz")


def test_non_square_position_grid(tmp_path):
    p = dict(small_model().params)
    p[POSEMB] = np.zeros((1, 1 + 12, 16))
    np.savez(tmp_path / "grid.npz", **p)
    with pytest.raises(ValueError, match="not a square grid"):
        sv.ViT.from_checkpoint(tmp_path / "grid.npz")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    sv.save_checkpoint(path, small_model().params)
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        sv.save_checkpoint(path, small_model(num_classes=3).params)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def test_a_full_disk_is_one_line_naming_the_file_and_its_size(tmp_path, monkeypatch):
    """ENOSPC while a checkpoint is written: a WriteError (an OSError) whose message names the file and the
    space it needs, the old file left whole, no temporary file left."""
    import errno

    from scratchvit import files

    path = tmp_path / "c.npz"
    sv.save_checkpoint(path, small_model().params)
    before = path.read_bytes()

    def full(f, *a, **k):
        f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(files.WriteError) as e:
        sv.save_checkpoint(path, small_model().params)
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert str(e.value).startswith(f"cannot write {path}: no space left on the device (it needs about ")
    assert f" free in {tmp_path})" in str(e.value) and "\n" not in str(e.value)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.npz"]
    with pytest.raises(files.WriteError, match=r"cannot write .*nowhere.*"):
        files.write_text_atomic(tmp_path / "nowhere" / "x.json", "{}")


def test_saved_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        sv.save_checkpoint(tmp_path / "c.npz", small_model().params)
    finally:
        os.umask(old)
    assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_non_finite_values_are_refused_naming_the_array(tmp_path):
    p = {k: np.asarray(v) for k, v in small_model().params.items()}
    p["head/kernel"] = p["head/kernel"].copy()
    p["head/kernel"][0, :3] = np.nan
    p["head/kernel"][1, 0] = -np.inf
    np.savez(tmp_path / "nan.npz", **p)
    with pytest.raises(ValueError, match=r"nan\.npz: head/kernel holds 3 NaN / 1 inf values"):
        sv.ViT.from_checkpoint(tmp_path / "nan.npz")
    with pytest.raises(ValueError, match="head/kernel holds 3 NaN"):
        sv.load_checkpoint(tmp_path / "nan.npz")


def test_gelu_override_at_load(tmp_path, rng):
    m = small_model()
    for k in m.params:
        m.params[k] += rng.standard_normal(m.params[k].shape)
    sv.save_checkpoint(tmp_path / "c.npz", m.params, dtype=None)
    tanh = sv.ViT.from_checkpoint(tmp_path / "c.npz", dtype="float64")
    erf = sv.ViT.from_checkpoint(tmp_path / "c.npz", dtype="float64", gelu="erf")
    assert tanh.config.gelu == "tanh" and erf.config.gelu == "erf"
    images = rng.uniform(-1, 1, (2, 32, 32, 3))
    exact = sv.ViT(m.config.replace(gelu="erf"), params=m.params, dtype="float64")
    np.testing.assert_array_equal(erf.forward(images), exact.forward(images))
    assert np.abs(erf.forward(images) - tanh.forward(images)).max() > 1e-8  # the override takes effect
    with pytest.raises(ValueError, match="gelu"):
        sv.ViT.from_checkpoint(tmp_path / "c.npz", gelu="relu")


def test_save_refuses_unofficial_names(tmp_path):
    p = dict(small_model().params, **{"Transformer/encoderblock_0/Foo/kernel": np.zeros(3)})
    with pytest.raises(ValueError, match="not official.*Foo"):
        sv.save_checkpoint(tmp_path / "c.npz", p)
