"""Configuration keys of DI-MaskDINO.

``add_dimaskdino_config`` adds every key that the authors' code adds (same names, same defaults), so
their yaml files load unchanged, plus the ablation switches of this project:

* ``MODEL.MaskDINO.DI_ENABLED`` (default True): the De-Imbalance module (token interaction layers
  and the second selection) between the two-stage query selection and the decoder.
* ``MODEL.MaskDINO.BATO_ENABLED`` (default True): Balance-Aware Tokens Optimization before decoder
  layer 1.

With both off the model is MaskDINO. The transformer decoder name ``MaskDINODecoder`` (MaskDINO's own
yaml files) always builds the plain MaskDINO predictor; ``DIMaskDINODecoder`` reads the switches.

Keys kept for compatibility only (accepted, never read by the model): ``MODEL.MaskDINO.ENC_LAYERS``,
``PRE_NORM``, ``PRED_CONV``, ``EVAL_FLAG``, ``PANO_BOX_LOSS``, ``SEMANTIC_CE_LOSS``,
``MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS`` (the encoder uses
``MODEL.MaskDINO.NHEADS``, as in the authors' code), ``MODEL.MaskDINO.TEST.SEMANTIC_ON``,
``PANOPTIC_ON``, ``OBJECT_MASK_THRESHOLD``, ``OVERLAP_THRESHOLD``, ``PANO_TRANSFORM_EVAL``,
``PANO_TEMPERATURE``, ``SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE`` (only instance inference is
implemented) and the top-level ``Default_loading``.
"""
import logging

from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

__all__ = ["add_dimaskdino_config", "check_supported_inference", "check_supported_losses", "score_from_box_only"]

logger = logging.getLogger(__name__)


def _add_input_and_solver_keys(cfg):
    cfg.INPUT.DATASET_MAPPER_NAME = "MaskDINO_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # large-scale jitter
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    # progressive resizing (dimaskdino.engine.progressive_resize): training batches of the
    # iterations before UNTIL_ITER resized by SCALE; off with UNTIL_ITER 0
    cfg.INPUT.PROGRESSIVE_RESIZE = CN()
    cfg.INPUT.PROGRESSIVE_RESIZE.SCALE = 1.0
    cfg.INPUT.PROGRESSIVE_RESIZE.UNTIL_ITER = 0

    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1

    # exponential moving average of the weights (dimaskdino.engine.ema); d2go's key names
    cfg.MODEL_EMA = CN()
    cfg.MODEL_EMA.ENABLED = False
    cfg.MODEL_EMA.DECAY = 0.999


def _add_loss_keys(m):
    m.LEARN_TGT = False
    m.PANO_BOX_LOSS = False
    m.SEMANTIC_CE_LOSS = False
    m.DEEP_SUPERVISION = True
    m.NO_OBJECT_WEIGHT = 0.1
    m.CLASS_WEIGHT = 4.0
    m.DICE_WEIGHT = 5.0
    m.MASK_WEIGHT = 5.0
    m.BOX_WEIGHT = 5.0
    m.GIOU_WEIGHT = 2.0
    m.COST_CLASS_WEIGHT = 4.0
    m.COST_DICE_WEIGHT = 5.0
    m.COST_MASK_WEIGHT = 5.0
    m.COST_BOX_WEIGHT = 5.0
    m.COST_GIOU_WEIGHT = 2.0
    # point-sampled mask losses (PointRend-style importance sampling)
    m.TRAIN_NUM_POINTS = 112 * 112
    m.OVERSAMPLE_RATIO = 3.0
    m.IMPORTANCE_SAMPLE_RATIO = 0.75


def _add_transformer_keys(m):
    m.NHEADS = 8
    m.DROPOUT = 0.1
    m.DIM_FEEDFORWARD = 2048
    m.ENC_LAYERS = 0
    m.DEC_LAYERS = 6
    m.TI_LAYERS = 2
    m.INITIAL_PRED = True
    m.PRE_NORM = False
    m.BOX_LOSS = True
    m.HIDDEN_DIM = 256
    m.NUM_OBJECT_QUERIES = 100
    m.FIRST_SELECTED_QUERIES = 600
    m.NUM_GUIDING_TOKENS = 50
    m.ENFORCE_INPUT_PROJ = False
    m.TWO_STAGE = True
    m.INITIALIZE_BOX_TYPE = "no"  # one of "no", "bitmask", "mask2box"
    m.DN = "seg"  # one of "no", "standard", "seg"
    m.DN_NOISE_SCALE = 0.4
    m.DN_NUM = 100
    m.PRED_CONV = False
    m.EVAL_FLAG = 1
    m.SIZE_DIVISIBILITY = 32
    m.TRANSFORMER_DECODER_NAME = "MaskDINODecoder"
    # this project's ablation switches
    m.DI_ENABLED = True
    m.BATO_ENABLED = True


def _add_test_keys(m):
    m.TEST = CN()
    m.TEST.TEST_FOUCUS_ON_BOX = False  # (sic) read by score_from_box_only() below
    m.TEST.SEMANTIC_ON = True
    m.TEST.INSTANCE_ON = False
    m.TEST.PANOPTIC_ON = False
    m.TEST.OBJECT_MASK_THRESHOLD = 0.0
    m.TEST.OVERLAP_THRESHOLD = 0.0
    m.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    m.TEST.PANO_TRANSFORM_EVAL = True
    m.TEST.PANO_TEMPERATURE = 0.06


def _add_pixel_decoder_keys(h):
    h.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    h.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    h.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    h.DIM_FEEDFORWARD = 1024
    h.NUM_FEATURE_LEVELS = 3
    h.TOTAL_NUM_FEATURE_LEVELS = 4
    h.FEATURE_ORDER = "high2low"  # "low2high" or "high2low"
    h.MASK_DIM = 256
    h.TRANSFORMER_ENC_LAYERS = 0
    h.PIXEL_DECODER_NAME = "MaskDINOEncoder"


def _add_swin_keys(cfg):
    cfg.MODEL.SWIN = CN()
    s = cfg.MODEL.SWIN
    s.PRETRAIN_IMG_SIZE = 224
    s.PATCH_SIZE = 4
    s.EMBED_DIM = 96
    s.DEPTHS = [2, 2, 6, 2]
    s.NUM_HEADS = [3, 6, 12, 24]
    s.WINDOW_SIZE = 7
    s.MLP_RATIO = 4.0
    s.QKV_BIAS = True
    s.QK_SCALE = None
    s.DROP_RATE = 0.0
    s.ATTN_DROP_RATE = 0.0
    s.DROP_PATH_RATE = 0.3
    s.APE = False
    s.PATCH_NORM = True
    s.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    s.USE_CHECKPOINT = False


def add_dimaskdino_config(cfg):
    """Add the DI-MaskDINO keys (and their defaults) to a detectron2 config, in place.

    Like the authors' ``train_net.py``, this first adds detectron2's DeepLab keys (their merged
    configs contain ``MODEL.RESNETS.STEM_TYPE``, ``RES5_MULTI_GRID``, ``SOLVER.POLY_LR_*``...).

    Args:
        cfg: a detectron2 ``CfgNode``, usually from ``detectron2.config.get_cfg()``.
    """
    add_deeplab_config(cfg)
    _add_input_and_solver_keys(cfg)
    cfg.MODEL.MaskDINO = CN()
    _add_loss_keys(cfg.MODEL.MaskDINO)
    _add_transformer_keys(cfg.MODEL.MaskDINO)
    _add_test_keys(cfg.MODEL.MaskDINO)
    _add_pixel_decoder_keys(cfg.MODEL.SEM_SEG_HEAD)
    _add_swin_keys(cfg)
    # read by the authors' trainer only; accepted so that their merged configs load
    cfg.Default_loading = True


# ------------------------------------------------------------------------------------------------
# The authors' keys that are misspelt or name tasks this project does not implement are read here
# only; the model modules get clear names.


def score_from_box_only(cfg) -> bool:
    """``MODEL.MaskDINO.TEST.TEST_FOUCUS_ON_BOX`` (the authors' spelling): score detections by class
    score alone, without the mask-quality factor (``DIMaskDINO(focus_on_box=...)``)."""
    return bool(cfg.MODEL.MaskDINO.TEST.TEST_FOUCUS_ON_BOX)


def check_supported_inference(cfg) -> None:
    """Only instance inference is implemented: warn when the semantic/panoptic switches ask for more."""
    test = cfg.MODEL.MaskDINO.TEST
    if test.SEMANTIC_ON or test.PANOPTIC_ON or not test.INSTANCE_ON:
        logger.warning(
            "only instance inference is implemented; MODEL.MaskDINO.TEST.SEMANTIC_ON/PANOPTIC_ON/INSTANCE_ON "
            "are ignored"
        )


def check_supported_losses(cfg) -> None:
    """Reject the authors' panoptic/semantic loss switches (this project trains instance segmentation)."""
    m = cfg.MODEL.MaskDINO
    if m.PANO_BOX_LOSS:
        raise ValueError(
            "MODEL.MaskDINO.PANO_BOX_LOSS=True is the authors' panoptic box loss; this project "
            "trains instance segmentation only, set it to False"
        )
    if m.SEMANTIC_CE_LOSS and m.TEST.SEMANTIC_ON and not m.TEST.PANOPTIC_ON:
        raise ValueError(
            "MODEL.MaskDINO.SEMANTIC_CE_LOSS=True (softmax classification for semantic "
            "segmentation) is not supported; this project uses the focal loss, set it to False"
        )
