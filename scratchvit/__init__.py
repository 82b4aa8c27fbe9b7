"""scratchvit: the Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., ICLR 2021)
written from scratch on NumPy (CPU) and CuPy (GPU), every forward and backward pass by hand.

    import scratchvit as sv
    model = sv.ViT(sv.get_config("ViT-Ti_16", num_classes=10), seed=0)
    loss, grads = model.loss_and_grads(images, labels)
"""
import os

# OpenBLAS's worker threads spin for a while after each matrix product before they sleep; on a
# machine with few cores that spinning steals the cores from the element-wise work that follows
# (scratchvit runs it on threads of its own, see backend.blockwise). Shorter spinning made a ViT-Ti
# training step 10-13% faster on a 2-core machine (bench/README.md). Takes effect only if NumPy is
# not imported yet; a value set by the user wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from .configs import MODELS, ViTConfig, get_config
from .model import ViT
from .params import count_params, init_params, param_shapes

__version__ = "0.1.0"

__all__ = ["MODELS", "ViT", "ViTConfig", "count_params", "get_config", "init_params", "load_checkpoint",
           "param_shapes", "save_checkpoint"]
