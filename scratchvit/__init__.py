"""scratchvit: the Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., ICLR 2021)
written from scratch on NumPy (CPU) and CuPy (GPU), every forward and backward pass by hand.

    import scratchvit as sv
    model = sv.ViT(sv.get_config("ViT-Ti_16", num_classes=10), seed=0)
    loss, grads = model.loss_and_grads(images, labels)
"""
from . import cpu as _cpu

# OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads it: set it now if still possible
# (scratchvit/cpu.py says what it does; SCRATCHVIT_NO_CPU_TUNING=1 turns every CPU setting off).
_cpu.set_openblas_env()

# The rest after the line above (E402), so that the setting comes before anything imports NumPy.
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from .configs import MODELS, ResNetConfig, ViTConfig, get_config  # noqa: E402
from .model import ViT  # noqa: E402
from .params import count_params, init_params, param_shapes  # noqa: E402

__version__ = "0.1.0"

__all__ = ["MODELS", "ResNetConfig", "ViT", "ViTConfig", "count_params", "get_config", "init_params", "load_checkpoint",
           "param_shapes", "save_checkpoint"]
