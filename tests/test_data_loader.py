"""Tests of scratchvit.data: Batches over arrays and image files. No network."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from data_helpers import take, toy

from scratchvit.data import Batches, to_float, to_model_input

pytestmark = pytest.mark.usefixtures("isolated_data")


def test_train_batches_shapes_and_epoch_permutations():
    images, labels = toy(40)
    with Batches(images, labels, 8, 12, augment="none", seed=3) as b:
        assert b.steps_per_epoch == 5
        got = take(b, 15)
    assert [s for s, _, _ in got] == list(range(15))
    for _, x, y in got:
        assert x.shape == (8, 12, 12, 3) and x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(x, to_float(images[y]))  # the no-augmentation fast path
    epochs = [np.concatenate([y for _, _, y in got[5 * e:5 * e + 5]]) for e in range(3)]
    for e, order in enumerate(epochs):
        np.testing.assert_array_equal(order, np.random.default_rng([3, e]).permutation(40))
    assert not np.array_equal(epochs[0], epochs[1])


def test_train_drops_the_last_partial_batch():
    images, labels = toy(42)
    with Batches(images, labels, 8, 12, augment="none") as b:
        assert b.steps_per_epoch == 5
        ys = [y for _, _, y in take(b, 5)]
    assert all(len(y) == 8 for y in ys) and len(np.unique(np.concatenate(ys))) == 40


@pytest.mark.parametrize("augment", ["inception", "crop-flip"])
def test_resume_gives_identical_batches(augment):
    images, labels = toy(30, size=20)
    with Batches(images, labels, 7, 16, augment=augment, seed=11, workers=1) as b:
        full = take(b, 9)[5:]
    with Batches(images, labels, 7, 16, augment=augment, seed=11, start_step=5, workers=3) as b:
        resumed = take(b, 4)
    assert [s for s, _, _ in resumed] == [5, 6, 7, 8]
    for (s1, x1, y1), (s2, x2, y2) in zip(full, resumed, strict=True):
        assert s1 == s2
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(full[0][1], full[1][1])
    with Batches(images, labels, 7, 16, augment=augment, seed=12, start_step=5) as b:
        assert not np.array_equal(take(b, 1)[0][1], full[0][1])


def test_eval_pass_covers_every_image_once_in_order():
    images, labels = toy(10, size=6)
    b = Batches(images, labels, 4, 9, train=False, augment="inception")
    assert b.steps_per_epoch == 3
    got = list(b)
    assert [s for s, _, _ in got] == [0, 1, 2] and [len(y) for _, _, y in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, _, y in got]), labels)
    np.testing.assert_array_equal(np.concatenate([x for _, x, _ in got]), to_model_input(images, 9))
    assert len(list(b)) == 3  # a second pass starts again


def test_background_exception_reaches_the_consumer():
    images, labels = toy(40)
    b = Batches(images, labels, 8, 12, augment="none")
    real = b.make_batch

    def failing(step, map_fn=map):
        if step == 2:
            raise RuntimeError("broken batch 2")
        return real(step, map_fn)

    b.make_batch = failing
    seen = []
    with pytest.raises(RuntimeError, match="broken batch 2"):
        for step, _, _ in b:
            seen.append(step)
    assert seen == [0, 1]
    assert b._thread is None


def test_close_is_prompt_with_a_full_queue():
    images, labels = toy(40)
    b = Batches(images, labels, 8, 12, augment="flip", prefetch=1)
    it = iter(b)
    next(it)
    thread = b._thread
    time.sleep(0.2)  # the producer fills the queue and blocks
    t0 = time.perf_counter()
    b.close()
    assert time.perf_counter() - t0 < 1.0
    assert not thread.is_alive()
    assert not any(t.name == "scratchvit-batches" and t.is_alive() for t in threading.enumerate())


def test_an_iterator_never_advanced_starts_no_thread():
    images, labels = toy(40)
    b = Batches(images, labels, 8, 12, augment="none", workers=2)
    it = iter(b)
    assert b._thread is None and b._pool is None
    del it
    assert not any(t.name == "scratchvit-batches" and t.is_alive() for t in threading.enumerate())


def test_batches_argument_errors():
    images, labels = toy(10)
    with pytest.raises(ValueError, match="batch_size 16 exceeds the 10"):
        Batches(images, labels, 16, 12)
    with pytest.raises(ValueError, match="augment must be one of"):
        Batches(images, labels, 4, 12, augment="mixup")
    with pytest.raises(ValueError, match=r"uint8 array \(N, H, W, 3\)"):
        Batches(images.astype(np.float32), labels, 4, 12)
    with pytest.raises(ValueError, match=r"labels must be integers of shape \(10,\)"):
        Batches(images, labels[:3], 4, 12)
    with pytest.raises(ValueError, match="seed"):
        Batches(images, labels, 4, 12, seed=-1)

