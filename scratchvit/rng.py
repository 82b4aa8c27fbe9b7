"""The counter-based random numbers of a training step: dropout, attention-dropout, drop-path and
masked-patch masks.

**Masks are a pure function of (seed, step, site, global row, column)**, not of a generator's state:
each entry hashes its own counters (:func:`random_bits`, rounds of the 32-bit MurmurHash3 finaliser
``fmix32`` on uint32 arrays, plain array-API integer arithmetic that wraps modulo 2^32 on NumPy, CuPy
and array-api-strict alike). So the same mask comes out on every namespace; a part of a batch (an MPI
rank's rows, a micro-batch, a CPU thread's shard) draws for its rows exactly the entries the whole batch
draws for them, given the global index of its first row (:class:`RngKey`); and a resumed run redraws
the masks of its step. An entry is kept when its top 24 hash bits are >= round(p 2^24): the drop
probability is p to within 2^-25 (:func:`keep_mask`).

Each draw of the model has a site id (:func:`site`, :data:`EMBEDDING_SITE`), so that no two draws of a
step share their bits. The ops draw their own masks from (key, site id): :func:`scratchvit.ops.dropout_forward`,
:func:`scratchvit.ops.drop_path_forward`, :func:`scratchvit.ops.attention_forward` and
:func:`scratchvit.ops.corruption_plan` (masked patch prediction).
"""
from __future__ import annotations

import dataclasses

from .backend import device_of, namespace

MASK32 = 0xFFFFFFFF
KEEP_BITS = 24  # an entry is kept when its top KEEP_BITS hash bits are >= round(rate * 2**KEEP_BITS)
# Site ids of the model's random draws (:func:`site`): the embedding dropout, then SITES_PER_BLOCK per block.
EMBEDDING_SITE = 0
SITES_PER_BLOCK = 8
BLOCK_SITES = ("attention_probs", "attention_out", "mlp_hidden", "mlp_out", "drop_path_attention", "drop_path_mlp")


def site(block: int, name: str) -> int:
    """The site id of draw ``name`` (one of :data:`BLOCK_SITES`) in encoder block ``block`` (0-based)."""
    return 1 + SITES_PER_BLOCK * block + BLOCK_SITES.index(name)


def fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser on a Python int (Appleby, MurmurHash3 ``fmix32``): a bijection of [0, 2^32)."""
    h &= MASK32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def _fmix32_array(xp, h):
    """:func:`fmix32` on a uint32 array (products wrap modulo 2^32, as unsigned arithmetic does everywhere)."""
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


@dataclasses.dataclass(frozen=True)
class RngKey:
    """What fixes a training step's dropout and drop-path masks: the run's ``seed``, the ``step`` and the
    global index ``row`` of the part's first row in the step's global batch (MPI rank offset +
    micro-batch offset + thread shard offset). Python ints >= 0."""

    seed: int
    step: int
    row: int = 0

    def __post_init__(self):
        for f in ("seed", "step", "row"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"RngKey.{f} must be an integer >= 0, got {v!r}")

    def offset(self, rows: int) -> "RngKey":
        """The key of a part starting ``rows`` rows further into the global batch."""
        return dataclasses.replace(self, row=self.row + int(rows))

    def site_key(self, site_id: int) -> int:
        """A 32-bit key of (seed, step, site): the 64-bit seed and step absorbed 32 bits at a time, each
        through :func:`fmix32`. Host arithmetic on Python ints: no device work."""
        h = 0x9E3779B9
        for word in (self.seed & MASK32, self.seed >> 32, self.step & MASK32, self.step >> 32, site_id):
            h = fmix32(h ^ fmix32(word + 0x7F4A7C15))
        return h


def random_bits(xp, key: RngKey, site_id: int, shape, device=None):
    """uint32 hash bits of shape ``shape`` = (rows, ...): entry (i, j...) hashes (key.site_key(site_id),
    global row key.row + i, flat column index of j... within a row). The same on every namespace.

        h = fmix32(fmix32(k ^ fmix32(row * 0x9E3779B9 + 1)) + column * 0x85EBCA77)

    (uint32 arithmetic modulo 2^32; row and column counters below 2^32).

    Raises:
        ValueError: an empty shape (a row axis is needed).
    """
    if len(shape) < 1:
        raise ValueError("random_bits: shape needs a row axis, got ()")
    rows, cols = int(shape[0]), 1
    for n in shape[1:]:
        cols *= int(n)
    u32 = xp.uint32
    r = xp.arange(rows, dtype=u32, device=device) + xp.asarray(key.row & MASK32, dtype=u32, device=device)
    c = xp.arange(cols, dtype=u32, device=device)
    k = xp.asarray(key.site_key(site_id), dtype=u32, device=device)
    hr = _fmix32_array(xp, k ^ _fmix32_array(xp, r * 0x9E3779B9 + 1))  # (rows,)
    h = _fmix32_array(xp, xp.reshape(hr, (rows, 1)) + xp.reshape(c * 0x85EBCA77, (1, cols)))  # (rows, cols)
    return xp.reshape(h, tuple(int(n) for n in shape))


def uniform(xp, key: RngKey, site_id: int, shape, device=None, dtype=None):
    """Uniform numbers in [0, 1) of shape ``shape`` from :func:`random_bits` (its top 24 bits times 2^-24,
    exact in float32 and float64), ``dtype`` (default the namespace's float64)."""
    bits = random_bits(xp, key, site_id, shape, device) >> (32 - KEEP_BITS)
    return xp.astype(bits, dtype if dtype is not None else xp.float64) * (2.0 ** -KEEP_BITS)


def check_rate(rate) -> float:
    """``rate`` as a float, checked to lie in [0, 1) (a drop probability).

    Raises:
        ValueError: a rate outside [0, 1).
    """
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout: rate must lie in [0, 1), got {rate}")
    return rate


def keep_mask(xp, key: RngKey, site_id: int, shape, rate: float, dtype, device=None):
    """The inverted-dropout multiplier of shape ``shape`` = (rows, ...): 1 / (1 - rate) where the entry is
    kept, 0 where dropped (dropped with probability ``rate``, to within 2^-25), ``dtype``; an array of
    ``xp`` on ``device``. Rows are global rows ``key.row + i`` (see :func:`random_bits`).

    Raises:
        ValueError: ``rate`` outside [0, 1), an empty shape.
    """
    rate = check_rate(rate)
    threshold = round(rate * 2 ** KEEP_BITS)
    keep = (random_bits(xp, key, site_id, shape, device) >> (32 - KEEP_BITS)) >= threshold
    return xp.astype(keep, dtype) * (1.0 / (1.0 - rate))


def drop_mask(x, key: RngKey | None, site_id: int, shape, rate: float):
    """The :func:`keep_mask` of shape ``shape`` for the array ``x`` (its namespace, dtype and device), or None
    where nothing drops: ``rate`` 0, or no ``key`` (evaluation). The rule every dropping op follows
    (dropout, drop path, attention dropout).

    Raises:
        ValueError: ``rate`` outside [0, 1).
    """
    if check_rate(rate) == 0.0 or key is None:
        return None
    return keep_mask(namespace(x), key, site_id, shape, rate, x.dtype, device_of(x))
