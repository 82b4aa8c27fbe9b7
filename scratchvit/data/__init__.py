"""Datasets, transforms and background batching for scratchvit.

Public API::

    DATASETS                                    # names accepted by load_dataset
    load_dataset(name, data_dir=None, download=True, image_size=None) -> Dataset
    split_train_val(images, labels, val_fraction=0.02, seed=0)
    to_model_input(images_uint8, image_size)    # (B,H,W,3) uint8 -> (B,S,S,3) float32 in [-1, 1]
    Batches(images, labels, batch_size, image_size, train=True, augment="inception", ...)
"""
from .datasets import DATASETS, Dataset, cache_dir, download_url, load_dataset, split_train_val
from .loader import Batches
from .transforms import AUGMENTS, inception_crop, random_flip, resize, to_float, to_model_input

__all__ = [
    "AUGMENTS", "DATASETS", "Batches", "Dataset", "cache_dir", "download_url", "inception_crop",
    "load_dataset", "random_flip", "resize", "split_train_val", "to_float", "to_model_input",
]
