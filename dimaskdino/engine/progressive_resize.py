"""Progressive resizing: the first iterations of training see every batch at a smaller scale.

``INPUT.PROGRESSIVE_RESIZE.SCALE`` s and ``UNTIL_ITER`` n (LazyConfig: ``train.progressive_resize``
with ``scale`` / ``until_iter``): for iterations ``0 .. n - 1`` each training image the data
loader produced (after its augmentation, e.g. an LSJ crop of IMAGE_SIZE) is resized by s, with its
masks, before the model sees it; from iteration n on, and in every evaluation, images are used as
they come. Early in training a smaller image teaches about as much per iteration as a full one
(the main job: the same AP at 400 and 800 iterations at 96 and at 128 pixels) and costs less
(0.75 of the time at s = 0.75), so the time saved buys more iterations at full size, where the
final precision is learnt. The resize is detectron2's ``ResizeTransform`` (Pillow: bilinear image,
nearest-neighbour masks), after which boxes are made tight around the masks, as the LSJ mapper does.

Applied as a forward pre-hook on the training model, so the data loader, its workers and the
resume logic are unchanged; the iteration is the trainer's.
"""
import weakref

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances
from torch import nn

from ..data.mappers.instance_targets import transform_packed_masks

__all__ = ["add_progressive_resize", "check_progressive_resize", "rescale_training_record"]


def check_progressive_resize(scale: float, until_iter: int) -> None:
    """Raise ValueError naming INPUT.PROGRESSIVE_RESIZE's key when a value is out of range."""
    if not 0.0 < scale <= 4.0:
        raise ValueError(f"INPUT.PROGRESSIVE_RESIZE.SCALE must be in (0, 4], got {scale}")
    if until_iter < 0:
        raise ValueError(f"INPUT.PROGRESSIVE_RESIZE.UNTIL_ITER must be >= 0, got {until_iter}")


def rescale_training_record(record: dict, scale: float) -> dict:
    """A copy of one mapped training record with its image and instances resized by ``scale``.

    Args:
        record: a training dataset dict as the mappers give it: "image" (3, H, W) uint8 and,
            optionally, "instances" with gt_boxes, gt_classes and gt_masks (BitMasks (N, H, W)).
    Returns:
        the same keys with "image" (3, h, w), h = round(H * scale); "instances" of size (h, w),
        boxes tight around the resized masks, instances whose mask vanished dropped.
    """
    image = record["image"]
    height, width = image.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resize = T.ResizeTransform(height, width, *size)
    resized = resize.apply_image(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    out = dict(record, image=torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))))
    if "instances" in record:
        instances = record["instances"]
        if not isinstance(instances.gt_masks, BitMasks):
            raise TypeError(
                "INPUT.PROGRESSIVE_RESIZE resizes bitmask instances; this record's gt_masks are "
                f"{type(instances.gt_masks).__name__} ({record.get('file_name', '<no file_name>')})"
            )
        masks = instances.gt_masks.tensor.permute(1, 2, 0).numpy().astype(np.uint8)  # (H, W, N)
        if masks.shape[2]:
            masks = transform_packed_masks(masks, T.TransformList([resize]))
        else:  # nothing to pack
            masks = np.zeros((0, *size), np.uint8)
        target = Instances(size)
        target.gt_classes = instances.gt_classes
        target.gt_masks = BitMasks(torch.from_numpy(masks.astype(bool)))
        target.gt_boxes = target.gt_masks.get_bounding_boxes()
        out["instances"] = utils.filter_empty_instances(target)
    return out


def add_progressive_resize(trainer, model: nn.Module, scale: float, until_iter: int):
    """Resize the training batches of iterations before ``until_iter`` by ``scale`` (module
    docstring). Nothing is registered when it would change nothing (``until_iter`` 0 or
    ``scale`` 1). Returns the hook's handle, or None."""
    check_progressive_resize(scale, until_iter)
    if until_iter == 0 or scale == 1.0:
        return None
    trainer_ref = weakref.ref(trainer)

    def rescale(module, args):
        owner = trainer_ref()
        if not module.training or owner is None or owner.iter >= until_iter or not args:
            return None
        return ([rescale_training_record(r, scale) for r in args[0]],) + tuple(args[1:])

    return model.register_forward_pre_hook(rescale)
