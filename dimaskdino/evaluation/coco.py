"""COCO-style evaluation that works with or without detectron2's compiled ``_C``."""
import logging
import os
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator

logger = logging.getLogger(__name__)

__all__ = ["build_evaluator", "fast_coco_eval_available"]

# detectron2/evaluation/fast_eval_api.py calls these three functions of detectron2._C
_FAST_COCOEVAL_SYMBOLS = ("InstanceAnnotation", "COCOevalEvaluateImages", "COCOevalAccumulate")


def fast_coco_eval_available() -> bool:
    """Whether detectron2 was built with its C++ COCOeval (``COCOeval_opt``)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return all(hasattr(_C, symbol) for symbol in _FAST_COCOEVAL_SYMBOLS)


def _prepare_annotation_file(dataset_name: str) -> None:
    """
    COCOEvaluator reads ``json_file`` itself: make sure a generated dataset exists first, and
    fail with the file's name when it is missing. It also maps predicted class indices back to
    the json's category ids with ``thing_dataset_id_to_contiguous_id``, which load_coco_json
    sets only when the dataset is loaded: load it if that has not happened yet.
    """
    from dimaskdino.data import prepare_dataset

    prepare_dataset(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    json_file = getattr(metadata, "json_file", None)
    if not json_file:
        return
    if "://" not in json_file and not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Annotation file of dataset '{dataset_name}' not found: {json_file} "
            "(set $DETECTRON2_DATASETS to the folder holding the dataset)."
        )
    if not hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
        DatasetCatalog.get(dataset_name)


def build_evaluator(
    cfg, dataset_name: str, output_dir: Optional[str] = None, *, max_dets_per_image: Optional[int] = None
) -> DatasetEvaluator:
    """
    detectron2's COCOEvaluator for box and mask AP on ``dataset_name``, using the fast C++
    COCOeval only where detectron2._C provides it (pycocotools' COCOeval otherwise: the same
    numbers, slower).

    Args:
        cfg: a yacs CfgNode (reads OUTPUT_DIR) or None (LazyConfig files, tests).
        output_dir: where predictions and the converted COCO json are written; default
            ``cfg.OUTPUT_DIR/inference``.
        max_dets_per_image: COCOeval's detection limit; default 100, the standard COCO AP
            (a model keeping fewer detections per image is evaluated on all of them).
    """
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(
            f"Dataset '{dataset_name}' is not registered; registered datasets: "
            f"{', '.join(sorted(DatasetCatalog.list()))}"
        )
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", "coco")
    if evaluator_type not in ("coco", "lvis"):
        raise ValueError(
            f"Dataset '{dataset_name}' has evaluator_type '{evaluator_type}'; dimaskdino "
            "evaluates instance segmentation datasets (evaluator_type 'coco')."
        )
    if output_dir is None:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference") if cfg is not None else None
    _prepare_annotation_file(dataset_name)
    use_fast_impl = fast_coco_eval_available()
    if not use_fast_impl:
        logger.info("detectron2._C has no fast COCOeval: evaluating with pycocotools' COCOeval.")
    return COCOEvaluator(
        dataset_name,
        tasks=("bbox", "segm"),
        distributed=True,
        output_dir=output_dir,
        max_dets_per_image=max_dets_per_image or 100,
        use_fast_impl=use_fast_impl,
    )
