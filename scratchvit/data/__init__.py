"""Datasets, image decoding, transforms and background batching for scratchvit.

Modules, by source: ``sources`` (cache, MD5-checked downloads, ``apt-get download``, the chain of
sources), ``cifar``, ``idx`` ((Fashion-)MNIST), ``imagefolder`` (listing, ``ImageFiles``),
``images`` (decoding files), ``transforms`` (array transforms), ``loader`` (``Batches``),
``datasets`` (the front below).

Public API::

    DATASETS                                    # names accepted by load_dataset
    load_dataset(name, data_dir=None, download=True, image_size=None, skip_bad_images=False, log=None)
        -> Dataset  # .name .class_names .num_classes .train_images .train_labels .test_images .test_labels
    split_train_val(images, labels, val_fraction=0.02, seed=0)   # arrays or ImageFiles
    Batches(images, labels, batch_size, image_size, train=True, augment="inception", seed=0,
            start_step=0, prefetch=2, workers=2, crop_min_area=0.05, skip_bad_images=False, log=None,
            pad=4, random_erasing=0.0, mixup=0.0, cutmix=0.0, num_classes=None)   # soft targets with mixing
    load_image(path, image_size)                # file -> uint8 (S, S, 3): the evaluation view, the whole image resized
    to_model_input(images_uint8, image_size)    # (B,H,W,3) uint8 -> (B,S,S,3) float32 in [-1, 1]
"""
from .datasets import DATASETS, GREY_DATASETS, Dataset, load_dataset, split_train_val
from .imagefolder import IMAGE_EXTENSIONS, ImageFiles
from .images import BadImage, load_image, train_image
from .loader import Batches
from .sources import cache_dir, download_url
from .transforms import AUGMENTS, inception_crop, random_flip, resize, to_float, to_model_input

__all__ = [
    "AUGMENTS", "DATASETS", "GREY_DATASETS", "IMAGE_EXTENSIONS", "BadImage", "Batches", "Dataset", "ImageFiles",
    "cache_dir", "download_url", "inception_crop", "load_dataset", "load_image", "random_flip", "resize",
    "split_train_val", "to_float", "to_model_input", "train_image",
]
