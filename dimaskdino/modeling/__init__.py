"""DI-MaskDINO model: importing this package registers every model part in detectron2's registries.

``sem_seg_head`` (``MaskDINOHead``) returns a :class:`PredictorOutput` (``outputs.py``): typed
predictions of the final decoder layer, the auxiliary stages, the encoder proposals, the
token-interaction layers and, in training, the denoising queries; the criterion reads it whole.
"""
from .backbone import SwinTransformerBackbone
from .bato import BalanceAwareTokenOptimization
from .decoder import DeformableDecoder, DeformableDecoderLayer
from .denoising import DenoisingQueryGenerator
from .di_module import DeImbalanceModule, TokenInteractionLayer
from .dimaskdino import DIMaskDINO
from .head import MaskDINOHead
from .outputs import PredictorOutput, StagePrediction
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
    "PredictorOutput",
    "StagePrediction",
    "MaskDINOEncoder",
    "TRANSFORMER_DECODER_REGISTRY",
    "DIMaskDINOPredictor",
    "MaskDINOPredictor",
    "TwoStageQuerySelection",
]
