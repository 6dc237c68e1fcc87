"""What the predictor returns: typed predictions per stage, and the whole set of stages.

One :class:`StagePrediction` per stage of the query pipeline (B images, Q queries of that stage,
K classes); :class:`PredictorOutput` groups them as the criterion and the evaluation read them:

* ``final``: the last decoder layer (denoising queries removed), the model's output;
* ``aux``: the initial prediction (``INITIAL_PRED``) and decoder layers 0..D-2;
* ``interm``: the two-stage encoder proposals (first selection);
* ``ti``: the DI module's token-interaction layers (class and boxes, no masks);
* ``denoising``: training only, the denoising queries' predictions and groups
  (:class:`dimaskdino.modeling.denoising.DenoisingOutput`).

Outside training only ``final`` is filled unless every stage is asked for
(``DIMaskDINOPredictor.forward(..., all_stages=True)``).
"""
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional

import torch

if TYPE_CHECKING:  # only for annotations: denoising.py imports this module
    from .denoising import DenoisingOutput

__all__ = ["StagePrediction", "PredictorOutput", "stage_names"]


def stage_names(num_ti_layers: int, initial_pred: bool, num_decoder_layers: int) -> List[str]:
    """Names of the stages in pipeline order: "interm", "ti1".., "initial" (with INITIAL_PRED),
    "dec1".."decD" (the last one is the model's output)."""
    names = ["interm"] + [f"ti{i + 1}" for i in range(num_ti_layers)]
    names += ["initial"] if initial_pred else []
    return names + [f"dec{i + 1}" for i in range(num_decoder_layers)]


@dataclass
class StagePrediction:
    """logits: (B, Q, K) class logits; boxes: (B, Q, 4) sigmoid cxcywh relative to the padded input;
    masks: (B, Q, H/4, W/4) mask logits, or None for a stage without masks."""

    logits: torch.Tensor
    boxes: torch.Tensor
    masks: Optional[torch.Tensor] = None

    def queries(self, start: int, stop: Optional[int] = None) -> "StagePrediction":
        """The predictions of queries ``start:stop`` (dimension 1)."""
        masks = None if self.masks is None else self.masks[:, start:stop]
        return StagePrediction(self.logits[:, start:stop], self.boxes[:, start:stop], masks)

    def image(self, index: int) -> "StagePrediction":
        """The predictions of image ``index``, without the batch dimension: (Q, K), (Q, 4), (Q, h, w)."""
        masks = None if self.masks is None else self.masks[index]
        return StagePrediction(self.logits[index], self.boxes[index], masks)


@dataclass
class PredictorOutput:
    """Every stage's predictions; see the module docstring."""

    final: StagePrediction
    aux: List[StagePrediction] = field(default_factory=list)
    interm: Optional[StagePrediction] = None
    ti: List[StagePrediction] = field(default_factory=list)
    denoising: Optional["DenoisingOutput"] = None

    def named_stages(self, initial_pred: bool = True) -> Dict[str, StagePrediction]:
        """Stage name -> predictions in pipeline order: "interm", "ti1".., "initial" (when
        ``initial_pred``), "dec1".. up to the final layer. Needs every stage (``all_stages``)."""
        if self.interm is None:
            raise ValueError("named_stages needs every stage: run the predictor with all_stages=True")
        predictions = [self.interm, *self.ti, *self.aux, self.final]
        names = stage_names(len(self.ti), initial_pred, len(self.aux) + 1 - int(initial_pred))
        return dict(zip(names, predictions))
