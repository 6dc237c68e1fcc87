"""
Pictures of a run: a predictor usable from both config kinds, detectron2 Visualizer drawings of
predictions (and ground truth), and loss curves from ``metrics.json``.
"""
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..data.image_io import read_image
from .config_files import is_lazy_config, load_config
from .weights import load_weights

logger = logging.getLogger(__name__)

__all__ = ["Predictor", "draw_ground_truth", "draw_predictions", "plot_loss_curves", "prediction_grid"]


class Predictor:
    """
    Runs a model on single RGB images (H, W, 3) uint8, resizing them as the config's test
    loader does; built from a yaml or LazyConfig file plus overrides.
    """

    def __init__(self, model: torch.nn.Module, augmentation: T.Augmentation, input_format: str, metadata):
        self.model = model.eval()
        self.augmentation = augmentation
        self.input_format = input_format
        self.metadata = metadata

    @classmethod
    def from_config(cls, config_file: str, opts: Sequence[str] = (), weights: Optional[str] = None):
        cfg = load_config(config_file, opts)
        if is_lazy_config(config_file):
            return cls._from_lazy(cfg, weights)
        return cls._from_yaml(cfg, weights)

    @classmethod
    def _from_yaml(cls, cfg: CfgNode, weights: Optional[str]):
        from detectron2.modeling import build_model

        model = build_model(cfg)
        load_weights(model, weights or cfg.MODEL.WEIGHTS)
        aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
        return cls(model, aug, cfg.INPUT.FORMAT, metadata)

    @classmethod
    def _from_lazy(cls, cfg, weights: Optional[str]):
        model = instantiate(cfg.model).to(cfg.train.device)
        load_weights(model, weights or cfg.train.init_checkpoint, key="train.init_checkpoint")
        mapper = cfg.dataloader.test.mapper
        augs = [instantiate(a) for a in mapper.augmentations]
        names = cfg.dataloader.test.dataset.names
        name = names if isinstance(names, str) else names[0]
        return cls(model, T.AugmentationList(augs), mapper.image_format, MetadataCatalog.get(name))

    @torch.no_grad()
    def __call__(self, image_rgb: np.ndarray):
        """Returns the model's output dict for one image (e.g. {"instances": Instances})."""
        height, width = image_rgb.shape[:2]
        image = utils.convert_image_to_rgb(image_rgb, "RGB")
        if self.input_format == "BGR":
            image = image[:, :, ::-1]
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self.augmentation(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return self.model([{"image": tensor, "height": height, "width": width}])[0]


def draw_predictions(image_rgb: np.ndarray, instances, metadata, score_threshold: float = 0.5, scale: float = 1.0):
    """RGB drawing of the instances scoring at least ``score_threshold`` (boxes, masks, labels, scores)."""
    instances = instances.to("cpu")
    instances = instances[instances.scores >= score_threshold]
    visualizer = Visualizer(image_rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(instances).get_image()


def draw_ground_truth(image_rgb: np.ndarray, record: Dict, metadata, scale: float = 1.0):
    visualizer = Visualizer(image_rgb, metadata, scale=scale)
    return visualizer.draw_dataset_dict(record).get_image()


def prediction_grid(
    predictor: Predictor,
    records: List[Dict],
    output_png: str,
    score_threshold: float = 0.5,
    scale: float = 2.0,
) -> str:
    """A PNG with one column per image: predictions on top, ground truth below."""
    import cv2

    columns = []
    for record in records:
        image = read_image(record["file_name"], format="RGB")
        outputs = predictor(image)
        top = draw_predictions(image, outputs["instances"], predictor.metadata, score_threshold, scale)
        bottom = draw_ground_truth(image, record, predictor.metadata, scale)
        separator = np.full((4, top.shape[1], 3), 255, np.uint8)
        columns.append(np.concatenate([top, separator, bottom], 0))
        columns.append(np.full((columns[-1].shape[0], 4, 3), 255, np.uint8))
    grid = np.concatenate(columns[:-1], 1)
    os.makedirs(os.path.dirname(os.path.abspath(output_png)), exist_ok=True)
    cv2.imwrite(output_png, grid[:, :, ::-1])
    return output_png


def _read_metrics(metrics_json: str) -> List[Dict]:
    rows = []
    with open(metrics_json) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def plot_loss_curves(
    metrics_json: str,
    output_png: str,
    terms: Sequence[str] = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"),
) -> str:
    """
    Plot ``total_loss`` and the final-layer loss terms (left, log scale) and the learning rate
    (right) against the iteration, from detectron2's ``metrics.json``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _read_metrics(metrics_json) if "total_loss" in r]
    if not rows:
        raise ValueError(f"{metrics_json} has no training losses (no 'total_loss' entries)")
    iters = [r["iteration"] for r in rows]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_loss.plot(iters, [r["total_loss"] for r in rows], label="total_loss", color="black", lw=2)
    for term in terms:
        if term in rows[0]:
            ax_loss.plot(iters, [r.get(term, np.nan) for r in rows], label=term, lw=1)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_title("training losses (median over each logging window)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    if "lr" in rows[0]:
        ax_lr.plot(iters, [r["lr"] for r in rows], color="tab:blue")
    ax_lr.set_xlabel("iteration")
    ax_lr.set_title("learning rate")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output_png)), exist_ok=True)
    fig.savefig(output_png, dpi=100)
    plt.close(fig)
    return output_png
