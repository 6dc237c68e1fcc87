"""The DI-MaskDINO meta-architecture: image -> backbone -> pixel decoder -> predictor -> losses or Instances.

Registered in detectron2's ``META_ARCH_REGISTRY`` as "DIMaskDINO" and, for the authors' yaml files,
"MaskDINO". Training returns the criterion's (already weighted) loss dict; inference returns, per
image, ``{"instances": Instances}`` in the requested output size.
"""
from typing import Dict, List, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks

from ..config import check_supported_inference, score_from_box_only
from ..layers.box_ops import box_xyxy_to_cxcywh
from .backbone.resnet_stem import use_channels_last_stem_pooling
from .criterion import build_criterion
from .outputs import StagePrediction
from .postprocess import postprocess_prediction

__all__ = ["DIMaskDINO", "same_padded_size_groups"]


@META_ARCH_REGISTRY.register()
class DIMaskDINO(nn.Module):
    """Joint detection and instance segmentation with DI-MaskDINO (or MaskDINO with DI and BATO off)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        size_divisibility: int,
        pixel_mean: Tuple[float, float, float],
        pixel_std: Tuple[float, float, float],
        test_topk_per_image: int = 100,
        focus_on_box: bool = False,
    ):
        """
        Args:
            backbone: a detectron2 backbone giving the features the head reads
            sem_seg_head: pixel decoder + predictor (:class:`MaskDINOHead`)
            criterion: the training loss, called as ``criterion(outputs, targets)`` with the
                predictor's :class:`PredictorOutput`; None for a model that only predicts
            size_divisibility: inputs are padded to a multiple of this (negative: the backbone's)
            pixel_mean, pixel_std: per-channel normalisation of the input images
            test_topk_per_image: detections per image (top-k over query x class pairs)
            focus_on_box: score detections by class score only (no mask-quality factor)
        """
        super().__init__()
        self.backbone = backbone
        use_channels_last_stem_pooling(backbone)  # a detectron2 ResNet stem: same function, faster on the CPU
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.test_topk_per_image = test_topk_per_image
        self.focus_on_box = focus_on_box

    @classmethod
    def from_config(cls, cfg):
        check_supported_inference(cfg)
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "criterion": build_criterion(cfg),
            "size_divisibility": cfg.MODEL.MaskDINO.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "focus_on_box": score_from_box_only(cfg),
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: per image a dict with "image" (3, H, W) in cfg.INPUT.FORMAT, and for
                training "instances" (gt_boxes, gt_classes, gt_masks); optional "height"/"width"
                give the output size of inference.
        Returns:
            training: dict of weighted losses; inference: list of {"instances": Instances}
        """
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    # ----------------------------------------------------------------------------------------------
    def normalized_images(self, batched_inputs) -> List[torch.Tensor]:
        return [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]

    def losses(self, batched_inputs):
        if self.criterion is None:
            raise RuntimeError("this model was built without a criterion (criterion=None): it can only predict")
        if any("instances" not in x for x in batched_inputs):
            raise ValueError("training needs an 'instances' entry in every input dict")
        images = ImageList.from_tensors(self.normalized_images(batched_inputs), self.size_divisibility)
        features = self.backbone(images.tensor)
        targets = self.prepare_targets([x["instances"].to(self.device) for x in batched_inputs], images)
        return self.criterion(self.sem_seg_head(features, targets=targets), targets)

    def prepare_targets(self, instances: List[Instances], images: ImageList):
        """Targets of the criterion and the denoising queries.

        Returns:
            per image {"labels": (N,) int64, "boxes": (N, 4) cxcywh divided by the image's
            (unpadded) width/height, "masks": (N, H_pad, W_pad) padded with zeros}
        """
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for inst in instances:
            h, w = inst.image_size
            scale = torch.as_tensor([w, h, w, h], dtype=torch.float, device=self.device)
            masks = _mask_tensor(inst.gt_masks, h, w).to(self.device)
            padded = masks.new_zeros((masks.shape[0], h_pad, w_pad))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({
                "labels": inst.gt_classes.long(),
                "boxes": box_xyxy_to_cxcywh(inst.gt_boxes.tensor.float()) / scale,
                "masks": padded,
            })
        return targets

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict], all_stages: bool = False) -> List[Dict]:
        """Instances per image. Images are batched only with images of the same padded size, so an
        image gives the same instances alone or in any batch (padding is never masked).

        Args:
            all_stages: also return the Instances of every prediction stage
        Returns:
            per image {"instances": Instances} (the final stage), with ``all_stages`` also
            "stage_instances": stage name -> Instances in pipeline order ("interm", "ti1".., "initial",
            "dec1"..; box-only stages have no pred_masks), the last one being "instances"
        """
        images = self.normalized_images(batched_inputs)
        results: List[Dict] = [{} for _ in images]
        for indices in same_padded_size_groups(images, self.size_divisibility):
            batch = ImageList.from_tensors([images[i] for i in indices], self.size_divisibility)
            outputs = self.sem_seg_head(self.backbone(batch.tensor), all_stages=all_stages)
            padded_size = tuple(batch.tensor.shape[-2:])
            for j, i in enumerate(indices):
                image_size = tuple(batch.image_sizes[j])
                output_size = (int(batched_inputs[i].get("height", image_size[0])),
                               int(batched_inputs[i].get("width", image_size[1])))
                stages = (outputs.named_stages(self.sem_seg_head.predictor.initial_pred) if all_stages
                          else {"final": outputs.final})
                instances = {name: self.postprocess_image(stage.image(j), padded_size, image_size, output_size)
                             for name, stage in stages.items()}
                results[i]["instances"] = list(instances.values())[-1]
                if all_stages:
                    results[i]["stage_instances"] = instances
        return results

    def postprocess_image(self, prediction: StagePrediction, padded_size: Tuple[int, int],
                          image_size: Tuple[int, int], output_size: Tuple[int, int]) -> Instances:
        """Instances of one image from one stage's raw predictions (see ``postprocess_prediction``),
        with this model's detections per image and scoring."""
        return postprocess_prediction(prediction, padded_size, image_size, output_size,
                                      max_detections=self.test_topk_per_image, score_from_box_only=self.focus_on_box)


def same_padded_size_groups(images: List[torch.Tensor], size_divisibility: int) -> List[List[int]]:
    """Indices of the images grouped by their padded size (first appearance order)."""
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        if size_divisibility > 1:
            h, w = -(-h // size_divisibility) * size_divisibility, -(-w // size_divisibility) * size_divisibility
        groups.setdefault((int(h), int(w)), []).append(i)
    return list(groups.values())


def _mask_tensor(gt_masks, height: int, width: int) -> torch.Tensor:
    """(N, H, W) tensor from the mask types detectron2 mappers produce."""
    if isinstance(gt_masks, BitMasks):
        return gt_masks.tensor
    if isinstance(gt_masks, PolygonMasks):
        return BitMasks.from_polygon_masks(gt_masks, height, width).tensor
    if isinstance(gt_masks, torch.Tensor):
        return gt_masks
    raise TypeError(f"instances.gt_masks must be a BitMasks, PolygonMasks or Tensor, got {type(gt_masks).__name__}")


@META_ARCH_REGISTRY.register()
def MaskDINO(cfg) -> DIMaskDINO:  # noqa: N802 (the name in the authors' yaml files)
    return DIMaskDINO(cfg)
