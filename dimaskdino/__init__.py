"""DI-MaskDINO for detectron2.

Importing the package fills detectron2's registries: the ``DIMaskDINO`` meta-architecture, its
pixel decoder and transformer decoder, the Swin backbone, the dataset mappers and the datasets.
"""
from . import data, engine, modeling  # noqa: F401  (registration side effects)
from .config import add_dimaskdino_config
from .layers import MSDeformAttn, ms_deform_attn

__version__ = "0.1.0"
__all__ = ["MSDeformAttn", "add_dimaskdino_config", "ms_deform_attn", "__version__"]
