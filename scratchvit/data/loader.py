"""Deterministic batches prepared ahead of time by a background thread.

Training batches are a pure function of ``(seed, step)``: epoch ``e``'s order is
``np.random.default_rng([seed, e]).permutation(N)``, step ``s`` takes batch ``s % steps_per_epoch``
of epoch ``e = s // steps_per_epoch``, and its augmentation draws come from
``np.random.default_rng([seed, e, s])`` in a fixed order in one thread. A run stopped and
resumed with ``start_step=s`` therefore sees bit-identical batches, whatever ``workers`` is.

Image files (:class:`ImageFiles`) are decoded per batch on the worker threads (Pillow releases
the GIL while decoding and resizing). Their augmentation draws come from one generator per
image, ``np.random.default_rng([seed, e, s, i])`` for slot ``i`` of the batch, so the result
depends neither on the number of workers nor on the order the workers finish in.

The batch regularisers (random erasing, then mixup / CutMix, :mod:`.transforms`) act on the float
batch after that, their draws from ``np.random.default_rng([seed, e, s, REGULARISE_STREAM])`` (a
stream of their own: with them off, batches are what they were without them). With mixup or CutMix
on, training batches carry (B, K) float32 soft targets instead of integer labels.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..checks import check_positive_int
from .imagefolder import ImageFiles
from .images import BadImage, load_image, train_image
from .sources import default_log
from .transforms import AUGMENTS, augment_batch, mix_batch, random_erasing_batch, resize_batch, to_float

_END = object()  # end of an evaluation pass
REGULARISE_STREAM = 2 ** 32 + 1  # the 4th seed word of the regularisers' generator: never an image slot (< 2^32)


class _Failure:
    """An exception raised in the producer thread, carried to the consumer."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _chunked_map(pool: ThreadPoolExecutor, chunks: int):
    """A ``map``-like function that runs ``fn`` over ``chunks`` contiguous chunks on ``pool``.

    One task per chunk rather than per item keeps the thread overhead small for small images;
    results come back in input order.
    """
    def map_fn(fn, items):
        items = list(items)
        size = max(1, -(-len(items) // chunks))
        parts = pool.map(lambda part: [fn(item) for item in part],
                         [items[i:i + size] for i in range(0, len(items), size)])
        return [result for part in parts for result in part]

    return map_fn


class Batches:
    """Batches of model inputs, prepared ahead by a background thread.

    Iterating yields ``(step, x, y)`` with ``x`` float32 ``(B, image_size, image_size, 3)`` in
    [-1, 1] and ``y`` int64 ``(B,)``, or, for training with mixup / CutMix, float32 ``(B, num_classes)``
    soft targets.

    - ``train=True``: an endless stream of steps ``start_step, start_step + 1, ...`` in the
      deterministic shuffled order described in the module docstring, full batches only
      (the last ``N % batch_size`` images of each epoch's order are dropped), augmented with
      ``augment``.
    - ``train=False``: one pass over the images in order, steps from 0, the last partial batch
      kept, plain resize (``augment`` is ignored); image files get the same view, the whole
      image resized (``images.load_image``, as the official vit_jax evaluation).

    Image files (``ImageFiles``) are decoded per batch on the workers: training uses
    ``images.train_image`` (the Inception crop for "inception"; a resize of the whole image to
    ``image_size`` for "flip", "crop-flip" and "none", then their flips / pad-crops).
    An unreadable file raises a ``ValueError`` naming it, or, with ``skip_bad_images``, is
    left out of its batch (the batch is one image shorter; the same file is left out each
    time it comes up), counted in :attr:`skipped` and reported with one ``log`` line. A
    training batch whose every file is unreadable is an error; such an evaluation batch is
    not yielded.

    Each ``for`` loop starts a fresh producer thread at the first step; leaving the loop
    (``break``, exception, end of pass) or :meth:`close` stops it. Per-image Pillow work
    (resizes, Inception crops) runs on ``workers`` threads. When no resize and no Pillow
    work is needed, batches are built with fancy indexing and one vectorised conversion.
    Usable as a context manager (``with Batches(...) as b:``), which closes on exit.

    Args:
        images: uint8 ``(N, H, W, 3)``, or ``ImageFiles`` of N paths.
        labels: integer ``(N,)``.
        batch_size: images per batch (>= 1; <= N for training).
        image_size: side of the model's square input, pixels.
        train: endless augmented stream (True) or one ordered evaluation pass (False).
        augment: training augmentation, one of ``AUGMENTS``: "inception", "flip",
            "crop-flip", "pad-crop-flip", "none" (see ``transforms.augment_batch``).
        seed: fixes the order and augmentation of training batches.
        start_step: first training step (to resume a run); must be 0 for evaluation.
        prefetch: batches prepared ahead (queue size, >= 1).
        workers: threads for per-image work (>= 1; 1 runs it in the producer thread).
        crop_min_area: smallest Inception crop area, fraction of the image, in (0, 1].
        skip_bad_images: image files only: leave unreadable files out instead of raising.
        log: callable taking one line (skipped files); default prints to stderr.
        pad: padding of "pad-crop-flip", pixels (>= 0).
        random_erasing: training only: probability in [0, 1] that an image gets a random-erasing
            rectangle (``transforms.random_erasing_batch``).
        mixup, cutmix: training only: Beta alphas (>= 0; 0 off) of mixup and CutMix
            (``transforms.mix_batch``; both on: one of them per batch, p = 0.5); either on makes the
            targets soft.
        num_classes: K of the soft targets; needed when mixup or cutmix is on.

    Raises:
        ValueError: for any argument outside the limits above.

    Attributes:
        steps_per_epoch: ``N // batch_size`` for training, ``ceil(N / batch_size)`` for evaluation.
        skipped: unreadable files left out so far (each time one comes up, in batches built
            so far, which includes up to ``prefetch`` batches not yet consumed).
    """

    def __init__(self, images, labels, batch_size: int, image_size: int, train: bool = True,
                 augment: str = "inception", seed: int = 0, start_step: int = 0, prefetch: int = 2,
                 workers: int = 2, crop_min_area: float = 0.05, skip_bad_images: bool = False, log=None,
                 pad: int = 4, random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0,
                 num_classes: int | None = None):
        self.files = isinstance(images, ImageFiles)
        if not self.files and (not isinstance(images, np.ndarray) or images.dtype != np.uint8
                               or images.ndim != 4 or images.shape[3] != 3):
            desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise ValueError(f"images must be a uint8 array (N, H, W, 3) or ImageFiles, got {desc}")
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers of shape ({len(images)},), got {labels.dtype} {labels.shape}")
        for arg, value, low in (("batch_size", batch_size, 1), ("image_size", image_size, 1),
                                ("prefetch", prefetch, 1), ("workers", workers, 1), ("start_step", start_step, 0),
                                ("seed", seed, 0)):
            check_positive_int(arg, value, low)
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        check_positive_int("pad", pad, 0)
        if not 0.0 <= random_erasing <= 1.0:
            raise ValueError(f"random_erasing must be in [0, 1], got {random_erasing}")
        if not (mixup >= 0 and cutmix >= 0):
            raise ValueError(f"mixup and cutmix alphas must be >= 0, got {mixup} and {cutmix}")
        if (mixup or cutmix) and (num_classes is None or num_classes < 1 or (len(labels) and
                                                                             labels.max() >= num_classes)):
            raise ValueError(f"mixup / cutmix need num_classes above every label, got {num_classes}")
        if not 0.0 < crop_min_area <= 1.0:
            raise ValueError(f"crop_min_area must be in (0, 1], got {crop_min_area}")
        if len(images) == 0:
            raise ValueError("images is empty")
        if train and batch_size > len(images):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(images)} training images "
                             f"(training drops partial batches, so there would be no step)")
        if not train and start_step != 0:
            raise ValueError(f"start_step must be 0 for evaluation, got {start_step}")
        self.images, self.labels = images, labels.astype(np.int64, copy=False)
        self.batch_size, self.image_size, self.train = int(batch_size), int(image_size), bool(train)
        self.augment, self.seed, self.start_step = augment, int(seed), int(start_step)
        self.prefetch, self.workers, self.crop_min_area = int(prefetch), int(workers), float(crop_min_area)
        n = len(images)
        self.steps_per_epoch = n // self.batch_size if self.train else -(-n // self.batch_size)
        self.skip_bad_images, self.skipped = bool(skip_bad_images), 0
        self.pad, self.random_erasing, self.mixup, self.cutmix = int(pad), float(random_erasing), float(mixup), \
            float(cutmix)
        self.num_classes = num_classes
        self.log = default_log if log is None else log
        self._epoch_cache = (None, None)  # (epoch, permutation)
        self._pool = None
        self._stop = None
        self._thread = None

    # ---------------------------------------------------------------------------- batch content

    def indices(self, step: int) -> np.ndarray:
        """The image indices of ``step``'s batch: int64 ``(B,)`` (shorter for a last eval batch)."""
        if not self.train:
            return np.arange(step * self.batch_size, min((step + 1) * self.batch_size, len(self.images)))
        epoch, b = divmod(step, self.steps_per_epoch)
        if self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.images)))
        return self._epoch_cache[1][b * self.batch_size:(b + 1) * self.batch_size]

    def make_batch(self, step: int, map_fn=map) -> tuple[np.ndarray, np.ndarray]:
        """Build ``step``'s batch in the calling thread (what the producer thread runs).

        Args:
            step: training step, or evaluation batch number.
            map_fn: ``map``-like callable for per-image work; does not change the result.

        Returns:
            ``(x, y)``: float32 ``(B, image_size, image_size, 3)`` in [-1, 1], int64 ``(B,)`` (training
            with mixup / CutMix: float32 ``(B, num_classes)`` soft targets).
        """
        idx = self.indices(step)
        if self.files:
            return self._regularise(step, *self._file_batch(step, idx, map_fn))
        images = self.images[idx] if self.train else self.images[idx[0]:idx[-1] + 1]
        if self.train and self.augment != "none":
            epoch = step // self.steps_per_epoch
            rng = np.random.default_rng([self.seed, epoch, step])
            images = augment_batch(images, self.image_size, self.augment, rng, self.crop_min_area, map_fn,
                                   pad=self.pad)
        else:  # fast path when the size matches: no copy, one vectorised conversion
            images = resize_batch(images, self.image_size, map_fn)
        return self._regularise(step, to_float(images), self.labels[idx])

    def _regularise(self, step: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training batches: random erasing, then mixup / CutMix (soft targets), drawn from the step's
        regulariser stream (module docstring). Evaluation batches, or all off: ``(x, y)`` unchanged."""
        if not self.train or not (self.random_erasing or self.mixup or self.cutmix):
            return x, y
        rng = np.random.default_rng([self.seed, step // self.steps_per_epoch, step, REGULARISE_STREAM])
        x = random_erasing_batch(x, self.random_erasing, rng)
        if self.mixup or self.cutmix:
            x, y = mix_batch(x, y, self.num_classes, self.mixup, self.cutmix, rng)
        return x, y

    def _file_batch(self, step: int, idx: np.ndarray, map_fn) -> tuple[np.ndarray, np.ndarray]:
        """Decode the files of ``step``'s batch (``make_batch`` for ImageFiles); bad files skipped or raised."""
        paths, size = self.images.paths[idx], self.image_size
        epoch = step // self.steps_per_epoch if self.train else 0

        def one(slot):
            try:
                if not self.train:
                    return load_image(paths[slot], size)
                rng = np.random.default_rng([self.seed, epoch, step, slot])
                return train_image(paths[slot], size, self.augment, rng, self.crop_min_area, self.pad)
            except BadImage as e:
                if not self.skip_bad_images:
                    raise
                return e

        results = list(map_fn(one, range(len(paths))))
        keep = np.array([not isinstance(r, BadImage) for r in results], bool)
        for r in results:
            if isinstance(r, BadImage):
                self.skipped += 1
                self.log(f"skipping an unreadable image ({self.skipped} skipped so far): {r}")
        if self.train and not keep.any():
            raise ValueError(f"every image of training step {step} is unreadable, e.g. {results[0]}")
        x = np.empty((int(keep.sum()), size, size, 3), np.uint8)
        for i, r in enumerate(r for r in results if not isinstance(r, BadImage)):
            x[i] = r
        return to_float(x), self.labels[idx][keep]

    # ---------------------------------------------------------------------------- threading

    def _steps(self):
        if self.train:
            step = self.start_step
            while True:
                yield step
                step += 1
        else:
            yield from range(self.steps_per_epoch)

    def _produce(self, stop: threading.Event, q: queue.Queue, map_fn):
        def put(item):
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for step in self._steps():
                if stop.is_set():
                    return
                x, y = self.make_batch(step, map_fn)
                if len(y) == 0:  # an evaluation batch of unreadable files only
                    continue
                if not put((step, x, y)):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, which re-raises)
            put(_Failure(e))

    def __iter__(self):
        return self._consume()

    def _start(self):
        """Start the background thread (and the worker pool); returns (stop event, queue)."""
        self.close()
        stop = threading.Event()
        q = queue.Queue(maxsize=self.prefetch)
        map_fn = map
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="scratchvit-batch-worker")
            map_fn = _chunked_map(self._pool, self.workers)
        self._stop = stop
        self._thread = threading.Thread(target=self._produce, args=(stop, q, map_fn),
                                        name="scratchvit-batches", daemon=True)
        self._thread.start()
        return stop, q

    def _consume(self):
        """The batches, as a generator: its first ``next()`` starts the thread (an iterator never
        advanced starts nothing, so nothing leaks); finishing, failing or closing it stops the thread."""
        stop, q = self._start()
        try:
            while not stop.is_set():
                try:
                    item = q.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:
            if self._stop is stop:
                self.close()
            else:
                stop.set()

    def close(self, timeout: float = 5.0):
        """Stop the background thread (promptly, even with a full queue) and the worker pool.

        Waits at most ``timeout`` seconds for a batch being built to finish. Safe to call
        more than once; iterating again afterwards starts a fresh thread.
        """
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._stop = self._thread = self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
