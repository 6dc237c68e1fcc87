"""DI-MaskDINO for detectron2.

Importing the package fills detectron2's registries: the ``DIMaskDINO`` meta-architecture, its
pixel decoder and transformer decoder, the Swin backbone, the dataset mappers and the datasets.
"""
__version__ = "0.1.0"
