"""The query side of DI-MaskDINO: query selection, DI, denoising, decoder and BATO with shared heads.

``DIMaskDINOPredictor`` is ``sem_seg_head.predictor``. It owns the heads that every stage shares: the
classifier ``class_embed``, the mask-embedding MLP ``mask_embed``, the box head ``box_embed`` (encoder
proposals and every decoder layer) and the decoder norm ``decoder_norm``.

Registered in ``TRANSFORMER_DECODER_REGISTRY`` under the authors' name "DIMaskDINODecoder" (DI and BATO
from ``MODEL.MaskDINO.DI_ENABLED`` / ``BATO_ENABLED``) and MaskDINO's "MaskDINODecoder" (both off).
"""
import logging
from dataclasses import replace
from typing import List, Optional

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.utils.registry import Registry

from ..layers.box_ops import box_xyxy_to_cxcywh, inverse_sigmoid, masks_to_boxes, masks_to_boxes_exclusive
from ..layers.mlp import MLP
from ..layers.position_encoding import pixel_sine_embedding
from .bato import BalanceAwareTokenOptimization
from .decoder import DecoderMemory, DecoderState, DeformableDecoder
from .denoising import DenoisingQueries, DenoisingQueryGenerator, join_denoising, split_denoising
from .di_module import DeImbalanceModule
from .outputs import PredictorOutput, StagePrediction
from .query_selection import TwoStageQuerySelection
from .utils import flatten_levels

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder", "DIMaskDINOPredictor", "MaskDINOPredictor"]

logger = logging.getLogger(__name__)

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Query predictors (``sem_seg_head.predictor``), built by ``cfg.MODEL.MaskDINO.TRANSFORMER_DECODER_NAME``
with ``(cfg)``.
"""


def build_transformer_decoder(cfg) -> nn.Module:
    """Build the predictor named by ``cfg.MODEL.MaskDINO.TRANSFORMER_DECODER_NAME``."""
    return TRANSFORMER_DECODER_REGISTRY.get(cfg.MODEL.MaskDINO.TRANSFORMER_DECODER_NAME)(cfg)


_BOX_INITIALIZERS = {"mask2box": masks_to_boxes, "bitmask": masks_to_boxes_exclusive}


def _check_arguments(hidden_dim, mask_dim, nheads, initial_pred, initialize_box_type, dn, bato_enabled) -> None:
    if initialize_box_type not in ("no", "mask2box", "bitmask"):
        raise ValueError(
            f"MODEL.MaskDINO.INITIALIZE_BOX_TYPE must be 'no', 'mask2box' or 'bitmask', got {initialize_box_type!r}"
        )
    if initialize_box_type != "no" and not initial_pred:
        raise ValueError("MODEL.MaskDINO.INITIALIZE_BOX_TYPE needs MODEL.MaskDINO.INITIAL_PRED = True")
    if dn not in ("no", "standard", "seg"):
        raise ValueError(f"MODEL.MaskDINO.DN must be 'no', 'standard' or 'seg', got {dn!r}")
    if hidden_dim % nheads != 0:
        raise ValueError(f"MODEL.MaskDINO.HIDDEN_DIM ({hidden_dim}) must be divisible by NHEADS ({nheads})")
    if bato_enabled and mask_dim != hidden_dim:
        raise ValueError(
            f"BATO needs MODEL.SEM_SEG_HEAD.MASK_DIM ({mask_dim}) == MODEL.MaskDINO.HIDDEN_DIM ({hidden_dim})"
        )


@TRANSFORMER_DECODER_REGISTRY.register()
class DIMaskDINOPredictor(nn.Module):
    """From multi-scale features and mask features to class logits, boxes and masks per query.

    Args:
        num_classes: K; hidden_dim: C; mask_dim: channels of the mask features and embeddings
        num_queries: decoder queries (NUM_OBJECT_QUERIES)
        first_selected_queries: tokens kept by the first selection when DI is on
        num_guiding_tokens: BATO's guiding tokens
        nheads, dim_feedforward, dropout: attention heads, FFN width and dropout of every layer
        dec_layers, ti_layers: decoder and token-interaction layers
        num_feature_levels: L; dec_n_points: sampling points per level and head
        initial_pred: predict (and supervise) before the first decoder layer
        initialize_box_type: "no", "mask2box" or "bitmask": initial boxes from the selection's masks
        dn: "no", "standard" or "seg" denoising training; dn_noise_scale, dn_num: its noise and size
        di_enabled, bato_enabled: the DI module and BATO
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        hidden_dim: int,
        mask_dim: int,
        num_queries: int,
        first_selected_queries: int,
        num_guiding_tokens: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        ti_layers: int,
        dropout: float,
        num_feature_levels: int,
        dec_n_points: int = 4,
        initial_pred: bool = True,
        initialize_box_type: str = "no",
        dn: str = "seg",
        dn_noise_scale: float = 0.4,
        dn_num: int = 100,
        di_enabled: bool = True,
        bato_enabled: bool = True,
    ):
        super().__init__()
        _check_arguments(hidden_dim, mask_dim, nheads, initial_pred, initialize_box_type, dn, bato_enabled)
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.initial_pred = initial_pred
        self.initialize_box_type = initialize_box_type
        self.dn = dn

        self.class_embed = nn.Linear(hidden_dim, num_classes)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.box_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.constant_(self.box_embed.layers[-1].weight, 0)
        nn.init.constant_(self.box_embed.layers[-1].bias, 0)
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        num_selected = first_selected_queries if di_enabled else num_queries
        self.query_selection = TwoStageQuerySelection(hidden_dim, num_selected)
        self.di_module = (
            DeImbalanceModule(hidden_dim, nheads, dim_feedforward, dropout, ti_layers, num_queries)
            if di_enabled else None
        )
        self.denoising = DenoisingQueryGenerator(num_classes, hidden_dim, dn_num, dn_noise_scale)
        self.decoder = DeformableDecoder(
            hidden_dim, nheads, dec_layers, dim_feedforward, dropout, num_feature_levels, dec_n_points
        )
        self.bato = (
            BalanceAwareTokenOptimization(hidden_dim, nheads, dim_feedforward, dropout, num_guiding_tokens)
            if bato_enabled else None
        )

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.MaskDINO
        if not m.TWO_STAGE:
            raise ValueError("MODEL.MaskDINO.TWO_STAGE = False is not supported: every published config is two-stage")
        if m.LEARN_TGT:
            raise ValueError("MODEL.MaskDINO.LEARN_TGT = True is not supported (not used by any published config)")
        if m.ENFORCE_INPUT_PROJ:
            raise ValueError("MODEL.MaskDINO.ENFORCE_INPUT_PROJ = True is not supported: the pixel decoder "
                             "already outputs HIDDEN_DIM channels")
        if cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM != m.HIDDEN_DIM:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.CONVS_DIM ({cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM}) must equal "
                f"MODEL.MaskDINO.HIDDEN_DIM ({m.HIDDEN_DIM})"
            )
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": m.HIDDEN_DIM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "num_queries": m.NUM_OBJECT_QUERIES,
            "first_selected_queries": m.FIRST_SELECTED_QUERIES,
            "num_guiding_tokens": m.NUM_GUIDING_TOKENS,
            "nheads": m.NHEADS,
            "dim_feedforward": m.DIM_FEEDFORWARD,
            "dec_layers": m.DEC_LAYERS,
            "ti_layers": m.TI_LAYERS,
            "dropout": m.DROPOUT,
            "num_feature_levels": cfg.MODEL.SEM_SEG_HEAD.TOTAL_NUM_FEATURE_LEVELS,
            "initial_pred": m.INITIAL_PRED,
            "initialize_box_type": m.INITIALIZE_BOX_TYPE,
            "dn": m.DN,
            "dn_noise_scale": m.DN_NOISE_SCALE,
            "dn_num": m.DN_NUM,
            "di_enabled": m.DI_ENABLED,
            "bato_enabled": m.BATO_ENABLED,
        }

    # ----------------------------------------------------------------------------------------------
    # shared heads
    def predict(self, queries, mask_features, with_masks: bool = True):
        """Class logits and masks of queries through the decoder norm and the shared heads.

        Args:
            queries: (B, Q, C); mask_features: (B, C_mask, H/4, W/4)
        Returns:
            logits: (B, Q, K); masks: (B, Q, H/4, W/4) logits, or None when ``with_masks`` is False
        """
        normed = self.decoder_norm(queries)
        logits = self.class_embed(normed)
        if not with_masks:
            return logits, None
        embeddings = self.mask_embed(normed)
        b, _, h, w = mask_features.shape
        masks = torch.bmm(embeddings, mask_features.flatten(2)).view(b, -1, h, w)
        return logits, masks

    def refine_boxes(self, hidden_state, reference):
        """Output boxes of a decoder layer: (B, Q, C) normalised states, (B, Q, 4) sigmoid input boxes."""
        return (self.box_embed(hidden_state) + inverse_sigmoid(reference)).sigmoid()

    # ----------------------------------------------------------------------------------------------
    def forward(self, multi_scale_features: List[torch.Tensor], mask_features, targets=None,
                all_stages: bool = False) -> PredictorOutput:
        """
        Args:
            multi_scale_features: L encoder maps (B, C, H_l, W_l) in encoder order
            mask_features: (B, C_mask, H/4, W/4)
            targets: training only, per image {"labels": (N,), "boxes": (N, 4) cxcywh normalised, ...}
            all_stages: outside training, also return every intermediate stage (always on in training)
        Returns:
            the predictions of every stage asked for, see :mod:`dimaskdino.modeling.outputs`
        """
        all_stages = all_stages or self.training
        memory = self.decoder_memory(multi_scale_features)
        queries, boxes_unsigmoid, interm = self.first_selection(memory, mask_features, all_stages)
        queries, boxes_unsigmoid, ti = self.de_imbalance(queries, boxes_unsigmoid, all_stages)
        dn = self.denoising_queries(targets)
        queries, boxes_unsigmoid = join_denoising(dn, queries, boxes_unsigmoid)
        initial = self.initial_prediction(queries, boxes_unsigmoid, mask_features) if all_stages else []
        state = self.decoder.initial_state(queries, boxes_unsigmoid)
        state, layer_mask_features = self.decode(state, memory, mask_features, dn)
        stages = initial + self.layer_predictions(state, layer_mask_features, all_stages)
        stages, denoising = split_denoising(stages, dn)
        if self.training and dn is None:
            stages[-1].logits = stages[-1].logits + self.denoising.graph_anchor()
        return PredictorOutput(final=stages[-1], aux=stages[:-1], interm=interm, ti=ti, denoising=denoising)

    def decoder_memory(self, multi_scale_features) -> DecoderMemory:
        """Memory tokens in the decoder's order: the encoder levels reversed."""
        maps = multi_scale_features[::-1]
        tokens, spatial_shapes, level_start_index = flatten_levels(maps)
        pos = torch.cat(
            [pixel_sine_embedding(m.shape[-2], m.shape[-1], self.hidden_dim // 2, m.device).flatten(0, 1)
             for m in maps], 0
        )[None]
        return DecoderMemory(tokens, pos, spatial_shapes, level_start_index)

    def first_selection(self, memory: DecoderMemory, mask_features, all_stages: bool):
        """Queries and logit boxes (detached) from the encoder tokens, and the proposals' predictions
        (None unless ``all_stages``)."""
        selected = self.query_selection(memory.tokens, memory.spatial_shapes, self.class_embed, self.box_embed)
        queries = selected.queries.detach()
        boxes_unsigmoid = selected.boxes_unsigmoid.detach()
        if not all_stages and self.initialize_box_type == "no":
            return queries, boxes_unsigmoid, None
        logits, masks = self.predict(selected.queries, mask_features)
        if self.initialize_box_type != "no":
            boxes_unsigmoid = self._initial_boxes(masks)
        interm = StagePrediction(logits, selected.boxes_unsigmoid.sigmoid(), masks) if all_stages else None
        return queries, boxes_unsigmoid, interm

    def _initial_boxes(self, masks):
        """logit boxes from binary masks: (B, Q, H/4, W/4) mask logits -> (B, Q, 4)."""
        b, q, h, w = masks.shape
        boxes = _BOX_INITIALIZERS[self.initialize_box_type](masks.detach().flatten(0, 1) > 0)
        boxes = box_xyxy_to_cxcywh(boxes) / torch.as_tensor([w, h, w, h], dtype=torch.float, device=masks.device)
        return inverse_sigmoid(boxes.reshape(b, q, 4))

    def de_imbalance(self, queries, boxes_unsigmoid, all_stages: bool):
        """Token interaction and the second selection (when DI is on); the TI layers' predictions
        when ``all_stages``."""
        if self.di_module is None:
            return queries, boxes_unsigmoid, []
        di_output = self.di_module(queries, boxes_unsigmoid, self.class_embed)
        ti_outputs = []
        if all_stages:
            for states, refined in zip(di_output.layer_outputs, di_output.layer_boxes):
                logits, _ = self.predict(states, None, with_masks=False)
                boxes = (self.di_module.box_embed(states) + inverse_sigmoid(refined)).sigmoid()
                ti_outputs.append(StagePrediction(logits, boxes))
        return di_output.queries, inverse_sigmoid(di_output.boxes), ti_outputs

    def denoising_queries(self, targets) -> Optional[DenoisingQueries]:
        """The noised ground truths of a training step (None outside training or without objects)."""
        if not self.training or self.dn == "no":
            return None
        if targets is None:
            raise ValueError("training with MODEL.MaskDINO.DN != 'no' needs targets")
        return self.denoising(targets, self.num_queries)

    def initial_prediction(self, queries, boxes_unsigmoid, mask_features) -> List[StagePrediction]:
        """The prediction before the first decoder layer (none unless INITIAL_PRED)."""
        if not self.initial_pred:
            return []
        logits, masks = self.predict(queries, mask_features)
        return [StagePrediction(logits, boxes_unsigmoid.sigmoid(), masks)]

    def decode(self, state: DecoderState, memory: DecoderMemory, mask_features, dn: Optional[DenoisingQueries]):
        """The decoder layers before BATO, BATO (memory and mask features), then the remaining layers.

        Returns:
            the decoder state after the last layer, and per layer the (B, C, H/4, W/4) mask features
            its masks are predicted from
        """
        attn_mask = None if dn is None else dn.attn_mask
        num_layers = len(self.decoder.layers)
        before = num_layers if self.bato is None else min(self.bato.layers_before, num_layers)
        state = self.decoder(state, before, memory, self.box_embed, self.decoder_norm, attn_mask)
        if before == num_layers:
            return state, [mask_features] * num_layers
        updated = self.bato(state.queries, self.decoder.position_queries(state), 0 if dn is None else dn.pad_size,
                            self.class_embed, self.mask_embed, memory, mask_features)
        memory = replace(memory, tokens=updated.memory)
        state = self.decoder(state, num_layers - before, memory, self.box_embed, self.decoder_norm, attn_mask)
        return state, [mask_features] * before + [updated.mask_features] * (num_layers - before)

    def layer_predictions(self, state: DecoderState, layer_mask_features, all_stages: bool) -> List[StagePrediction]:
        """Class logits, boxes and masks of every decoder layer (the last one only unless ``all_stages``)."""
        last = len(state.hidden_states) - 1
        stages = []
        for i in range(last + 1) if all_stages else [last]:
            hidden = state.hidden_states[i]
            logits, masks = self.predict(hidden, layer_mask_features[i])
            stages.append(StagePrediction(logits, self.refine_boxes(hidden, state.references[i]), masks))
        return stages


@TRANSFORMER_DECODER_REGISTRY.register()
class MaskDINOPredictor(DIMaskDINOPredictor):
    """Plain MaskDINO: the predictor without the DI module and BATO, whatever the switches say."""

    @classmethod
    def from_config(cls, cfg):
        args = super().from_config(cfg)
        if args["di_enabled"] or args["bato_enabled"]:
            logger.info("TRANSFORMER_DECODER_NAME 'MaskDINODecoder' builds plain MaskDINO: DI and BATO are off")
        args["di_enabled"] = False
        args["bato_enabled"] = False
        return args


# The names in the authors' and MaskDINO's yaml files, registered as builders of the classes above.
@TRANSFORMER_DECODER_REGISTRY.register()
def DIMaskDINODecoder(cfg) -> DIMaskDINOPredictor:  # noqa: N802 (a registry name)
    return DIMaskDINOPredictor(cfg)


@TRANSFORMER_DECODER_REGISTRY.register()
def MaskDINODecoder(cfg) -> MaskDINOPredictor:  # noqa: N802 (a registry name)
    return MaskDINOPredictor(cfg)
