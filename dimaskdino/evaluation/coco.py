"""COCO-style evaluation with a compiled COCOeval where one is available.

Three engines compute the same COCO AP, fastest first:

* ``detectron2``: detectron2's own C++ ``COCOeval_opt``, when detectron2 was built with it;
* ``faster-coco-eval``: the compiled COCOeval of the ``faster-coco-eval`` package (this project's
  detectron2 route has no compiled ops, so this is the usual engine);
* ``pycocotools``: the reference pure-Python COCOeval, used when neither is there.
"""
import contextlib
import copy
import functools
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.evaluation import coco_evaluation as d2_coco_evaluation
from pycocotools.coco import COCO

logger = logging.getLogger(__name__)

__all__ = [
    "BatchedResultsCOCO",
    "CompiledCOCOEvaluator",
    "build_evaluator",
    "coco_eval_engine",
    "compiled_cocoeval_class",
    "fast_coco_eval_available",
]

# detectron2/evaluation/fast_eval_api.py calls these three functions of detectron2._C
_FAST_COCOEVAL_SYMBOLS = ("InstanceAnnotation", "COCOevalEvaluateImages", "COCOevalAccumulate")
_fallback_notice_given = False


def fast_coco_eval_available() -> bool:
    """Whether detectron2 was built with its C++ COCOeval (``COCOeval_opt``)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return all(hasattr(_C, symbol) for symbol in _FAST_COCOEVAL_SYMBOLS)


def compiled_cocoeval_class():
    """faster-coco-eval's compiled COCOeval class (pycocotools' interface) that keeps compressed RLE
    masks as they are (see ``_keeping_compressed_rles``), or None if faster-coco-eval is not
    installed."""
    try:
        from faster_coco_eval import COCOeval_faster
        from faster_coco_eval.core import cocoeval as fce_cocoeval
    except ImportError:
        return None
    return _keeping_compressed_rles(COCOeval_faster, fce_cocoeval)


def _is_compressed_rle(segmentation) -> bool:
    return isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes))


@contextlib.contextmanager
def _compressed_rles_passed_through(fce_cocoeval):
    """While active, faster-coco-eval's ``calculateRleForAllAnnotations`` (which its COCOeval calls
    on every ground truth and detection to give each an ``"rle"``) hands an annotation whose
    segmentation already is a compressed RLE over as it is, and converts only the others (polygons,
    uncompressed RLEs). Converting a compressed RLE decodes its string and encodes the same runs
    again: most of a segm evaluation's time on 500k detections, for the same IoUs, because the IoU
    function decodes the strings anyway. Boundary IoU still converts everything."""
    mask_api = getattr(fce_cocoeval, "maskUtils", None)
    convert_all = getattr(mask_api, "calculateRleForAllAnnotations", None)
    if convert_all is None:  # a faster-coco-eval laid out differently: evaluate it as it is
        yield
        return

    def convert_the_rest(anns, img_sizes, compute_rle, compute_boundary, *args, **kwargs):
        if compute_rle and not compute_boundary:
            rest = []
            for ann in anns:
                if _is_compressed_rle(ann.get("segmentation")):
                    ann["rle"] = ann["segmentation"]
                else:
                    rest.append(ann)
            anns = rest
        return convert_all(anns, img_sizes, compute_rle, compute_boundary, *args, **kwargs)

    mask_api.calculateRleForAllAnnotations = convert_the_rest
    try:
        yield
    finally:
        mask_api.calculateRleForAllAnnotations = convert_all


@functools.lru_cache(maxsize=None)
def _keeping_compressed_rles(cocoeval_class, fce_cocoeval):
    """A subclass of faster-coco-eval's ``cocoeval_class`` whose ``_prepare`` passes compressed RLE
    masks through (same AP: the IoU function decodes the same runs)."""

    def _prepare(self):
        with _compressed_rles_passed_through(fce_cocoeval):
            cocoeval_class._prepare(self)

    doc = f"faster-coco-eval's {cocoeval_class.__name__}, compressed RLE masks passed through."
    return type(f"{cocoeval_class.__name__}KeepingRLE", (cocoeval_class,), {"_prepare": _prepare, "__doc__": doc})


def coco_eval_engine() -> str:
    """The COCOeval engine ``build_evaluator`` uses: "detectron2", "faster-coco-eval" or "pycocotools"."""
    if fast_coco_eval_available():
        return "detectron2"
    if compiled_cocoeval_class() is not None:
        return "faster-coco-eval"
    return "pycocotools"


def _notice_pycocotools_fallback() -> None:
    global _fallback_notice_given
    if not _fallback_notice_given:
        _fallback_notice_given = True
        logger.warning(
            "faster-coco-eval is not installed: evaluating with pycocotools' COCOeval "
            "(same AP, several times slower; `pip install faster-coco-eval`)."
        )


@contextlib.contextmanager
def _detectron2_fast_cocoeval_replaced_by(cocoeval_class):
    """detectron2's COCOEvaluator instantiates ``coco_evaluation.COCOeval_opt`` when its fast path
    is on: point that name at ``cocoeval_class`` for the duration of one evaluation."""
    previous = d2_coco_evaluation.COCOeval_opt
    d2_coco_evaluation.COCOeval_opt = cocoeval_class
    try:
        yield
    finally:
        d2_coco_evaluation.COCOeval_opt = previous


# pycocotools' batched area()/toBbox() overflow past 255 masks in one call (numpy uint8 shape bug)
_RLE_CHUNK = 255


def _areas_and_boxes(rles: List[Dict]):
    """(N,) uint32 areas and (N, 4) float64 XYWH boxes of compressed RLEs, in chunks of C calls."""
    chunks = [rles[i:i + _RLE_CHUNK] for i in range(0, len(rles), _RLE_CHUNK)]
    areas = np.concatenate([mask_util.area(chunk) for chunk in chunks])
    boxes = np.concatenate([mask_util.toBbox(chunk) for chunk in chunks])
    return areas, boxes


class BatchedResultsCOCO(COCO):
    """pycocotools' COCO whose ``loadRes`` of mask results computes the masks' areas and boxes in a
    few batched C calls instead of two calls per detection, and whose ``getAnnIds`` filters
    categories with a set: the slowest Python parts of a segm evaluation (500k detections on COCO
    val). Every other kind of result goes to pycocotools' ``loadRes``; the results are the same
    (same fields, values, types and order)."""

    @classmethod
    def sharing(cls, coco: COCO) -> "BatchedResultsCOCO":
        """A view of ``coco`` (same dataset and index, not copied) with the batched ``loadRes``."""
        view = cls.__new__(cls)
        view.__dict__.update(coco.__dict__)
        return view

    def getAnnIds(self, imgIds=[], catIds=[], areaRng=[], iscrowd=None):  # noqa: N802,N803,B006
        """pycocotools' getAnnIds (same ids, same order), testing each annotation's category against
        a set instead of a list: COCOeval asks for all 80 categories at once."""
        if isinstance(catIds, (list, tuple)) and len(catIds) > 1:
            catIds = frozenset(catIds)
        return super().getAnnIds(imgIds=imgIds, catIds=catIds, areaRng=areaRng, iscrowd=iscrowd)

    def loadRes(self, resFile):  # noqa: N802 (pycocotools' name)
        anns = resFile
        if not (isinstance(anns, list) and anns and "segmentation" in anns[0]
                and "caption" not in anns[0] and not anns[0].get("bbox")):
            return super().loadRes(resFile)
        unknown = {ann["image_id"] for ann in anns} - set(self.getImgIds())
        if unknown:
            raise ValueError(f"Results hold image ids not in the ground truth: {sorted(unknown)[:5]}")
        areas, boxes = _areas_and_boxes([ann["segmentation"] for ann in anns])
        for index, (ann, area, box) in enumerate(zip(anns, areas, boxes)):
            ann["area"] = area
            if "bbox" not in ann:
                ann["bbox"] = box
            ann["id"] = index + 1
            ann["iscrowd"] = 0
        results = BatchedResultsCOCO()
        results.dataset["info"] = copy.deepcopy(self.dataset.get("info", {}))
        results.dataset["images"] = list(self.dataset["images"])
        results.dataset["categories"] = copy.deepcopy(self.dataset["categories"])
        results.dataset["annotations"] = anns
        with contextlib.redirect_stdout(None):
            results.createIndex()
        return results


class CompiledCOCOEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator (same arguments, same results dict) computing AP with a compiled
    COCOeval class that has pycocotools' interface (default: faster-coco-eval's)."""

    def __init__(self, *args, cocoeval_class=None, **kwargs):
        kwargs["use_fast_impl"] = True  # detectron2's switch to the class installed below
        super().__init__(*args, **kwargs)
        self._cocoeval_class = cocoeval_class or compiled_cocoeval_class()
        if self._cocoeval_class is None:
            raise ImportError("CompiledCOCOEvaluator needs faster-coco-eval: `pip install faster-coco-eval`")
        self._coco_api = BatchedResultsCOCO.sharing(self._coco_api)

    def _eval_predictions(self, predictions, img_ids=None):
        engine = f"{self._cocoeval_class.__module__}.{self._cocoeval_class.__name__}"
        self._logger.info(f"COCOeval engine: {engine} (compiled, pycocotools' definitions)")
        with _detectron2_fast_cocoeval_replaced_by(self._cocoeval_class):
            super()._eval_predictions(predictions, img_ids=img_ids)


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


def _check_dataset(dataset_name: str) -> None:
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


def build_evaluator(
    cfg,
    dataset_name: str,
    output_dir: Optional[str] = None,
    *,
    max_dets_per_image: Optional[int] = None,
    tasks: Sequence[str] = ("bbox", "segm"),
) -> DatasetEvaluator:
    """
    detectron2's COCOEvaluator for box and mask AP on ``dataset_name``, with the fastest COCOeval
    engine available (:func:`coco_eval_engine`; all give pycocotools' numbers).

    Args:
        cfg: a yacs CfgNode (reads OUTPUT_DIR) or None (LazyConfig files, tests).
        output_dir: where predictions and the converted COCO json are written; default
            ``cfg.OUTPUT_DIR/inference``.
        max_dets_per_image: COCOeval's detection limit; default 100, the standard COCO AP
            (a model keeping fewer detections per image is evaluated on all of them).
        tasks: the COCO tasks to evaluate ("bbox" alone for predictions without masks).
    """
    _check_dataset(dataset_name)
    if output_dir is None:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference") if cfg is not None else None
    _prepare_annotation_file(dataset_name)
    options = dict(
        tasks=tuple(tasks), distributed=True, output_dir=output_dir, max_dets_per_image=max_dets_per_image or 100
    )
    engine = coco_eval_engine()
    if engine == "detectron2":
        return COCOEvaluator(dataset_name, use_fast_impl=True, **options)
    if engine == "faster-coco-eval":
        return CompiledCOCOEvaluator(dataset_name, **options)
    _notice_pycocotools_fallback()
    return COCOEvaluator(dataset_name, use_fast_impl=False, **options)
