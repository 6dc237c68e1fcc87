"""DI-MaskDINO model: importing this package registers every model part in detectron2's registries.

Outputs of ``sem_seg_head`` (``MaskDINOHead``) consumed by the criterion, per training step:

* ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) sigmoid cxcywh relative to the padded input,
  ``pred_masks`` (B, Q, H/4, W/4) logits: the last decoder layer, denoising queries removed;
* ``aux_outputs``: the same three keys for the initial prediction and decoder layers 0..D-2;
* ``interm_outputs``: the same three keys for the first-selected encoder proposals;
* ``ti_outputs``: per token-interaction layer ``pred_logits`` (B, Q1, K), ``pred_boxes`` (B, Q1, 4);
* ``dn_meta``: None or {"num_groups", "single_pad", "pad_size", "outputs"} for the denoising queries.
"""
from .backbone import SwinTransformerBackbone
from .bato import BalanceAwareTokenOptimization
from .decoder import DeformableDecoder, DeformableDecoderLayer
from .denoising import DenoisingQueryGenerator
from .di_module import DeImbalanceModule, TokenInteractionLayer
from .dimaskdino import DIMaskDINO
from .head import MaskDINOHead
from .pixel_decoder import MaskDINOEncoder
from .predictor import TRANSFORMER_DECODER_REGISTRY, DIMaskDINOPredictor, MaskDINOPredictor
from .query_selection import TwoStageQuerySelection

__all__ = [
    "SwinTransformerBackbone",
    "BalanceAwareTokenOptimization",
    "DeformableDecoder",
    "DeformableDecoderLayer",
    "DenoisingQueryGenerator",
    "DeImbalanceModule",
    "TokenInteractionLayer",
    "DIMaskDINO",
    "MaskDINOHead",
    "MaskDINOEncoder",
    "TRANSFORMER_DECODER_REGISTRY",
    "DIMaskDINOPredictor",
    "MaskDINOPredictor",
    "TwoStageQuerySelection",
]
