"""Progressive resizing: one record resized against Pillow and hand-made masks, the hook's
schedule (iterations, evaluation), the config checks, and the trainer's wiring."""
import numpy as np
import pytest
import torch
from detectron2.config import CfgNode as CN
from detectron2.structures import BitMasks, Boxes, Instances
from PIL import Image
from torch import nn

from dimaskdino.engine.progressive_resize import (
    add_progressive_resize,
    check_progressive_resize,
    rescale_training_record,
)


def _record(size=128, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
    masks = np.zeros((3, size, size), bool)
    masks[0, 8:40, 16:64] = True  # a rectangle
    yy, xx = np.mgrid[:size, :size]
    masks[1] = (yy - 90) ** 2 + (xx - 70) ** 2 < 20 ** 2  # a disc
    masks[2, 100, 3] = True  # one pixel: vanishes at scale 0.5 (no pixel centre falls on it)
    instances = Instances((size, size))
    instances.gt_classes = torch.tensor([2, 0, 1])
    instances.gt_masks = BitMasks(torch.from_numpy(masks))
    instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    return {"image": torch.from_numpy(image), "instances": instances, "file_name": "x.png"}


def _tight_box(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("scale", [0.75, 0.5])
def test_rescaled_record_matches_pillow_resizes(scale):
    record = _record()
    out = rescale_training_record(record, scale)
    size = round(128 * scale)
    assert out["image"].shape == (3, size, size) and out["image"].dtype == torch.uint8
    assert out["file_name"] == "x.png" and record["image"].shape == (3, 128, 128)  # input untouched

    pil = np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR))
                    for c in record["image"].numpy()])
    assert np.array_equal(out["image"].numpy(), pil)

    masks = record["instances"].gt_masks.tensor.numpy()
    expected = [np.asarray(Image.fromarray(m.astype(np.uint8)).resize((size, size), Image.NEAREST)) > 0
                for m in masks]
    expected = [m for m in expected if m.any()]
    instances = out["instances"]
    assert instances.image_size == (size, size)
    assert len(instances) == len(expected) == (3 if scale == 0.75 else 2)
    assert np.array_equal(instances.gt_masks.tensor.numpy(), np.stack(expected))
    assert instances.gt_boxes.tensor.tolist() == [_tight_box(m) for m in expected]
    assert instances.gt_classes.tolist() == [2, 0, 1][: len(expected)]


def test_rescaled_record_without_instances_or_objects():
    record = _record()
    assert set(rescale_training_record({"image": record["image"]}, 0.5)) == {"image"}
    empty = Instances((128, 128))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    empty.gt_masks = BitMasks(torch.zeros((0, 128, 128), dtype=torch.bool))
    empty.gt_boxes = Boxes(torch.zeros((0, 4)))
    out = rescale_training_record({"image": record["image"], "instances": empty}, 0.5)
    assert len(out["instances"]) == 0 and out["instances"].gt_masks.tensor.shape == (0, 64, 64)


def test_rescaling_polygon_instances_is_refused_naming_the_file():
    from detectron2.structures import PolygonMasks

    record = _record()
    record["instances"].gt_masks = PolygonMasks([[np.array([1.0, 1.0, 9.0, 1.0, 9.0, 9.0])]] * 3)
    with pytest.raises(TypeError, match=r"bitmask instances.*PolygonMasks \(x.png\)"):
        rescale_training_record(record, 0.5)


class _SizeRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, batched_inputs):
        self.sizes.append([tuple(r["image"].shape[-2:]) for r in batched_inputs])
        return {}


class _Trainer:
    iter = 0


def test_hook_resizes_training_batches_before_until_iter_only():
    model, trainer = _SizeRecorder(), _Trainer()
    handle = add_progressive_resize(trainer, model, 0.75, until_iter=2)
    batch = [_record(seed=0), _record(seed=1)]
    for iteration in range(4):
        trainer.iter = iteration
        model(batch)
    model.eval()
    trainer.iter = 0
    model(batch)  # an evaluation early in training sees full-size images
    assert model.sizes == [[(96, 96)] * 2] * 2 + [[(128, 128)] * 2] * 3
    handle.remove()
    model.train()
    model(batch)
    assert model.sizes[-1] == [(128, 128)] * 2


def test_hook_off_and_bad_values():
    model = _SizeRecorder()
    assert add_progressive_resize(_Trainer(), model, 0.75, until_iter=0) is None
    assert add_progressive_resize(_Trainer(), model, 1.0, until_iter=100) is None
    with pytest.raises(ValueError, match=r"PROGRESSIVE_RESIZE.SCALE must be in \(0, 4\], got 0"):
        check_progressive_resize(0.0, 10)
    with pytest.raises(ValueError, match=r"PROGRESSIVE_RESIZE.UNTIL_ITER must be >= 0, got -1"):
        check_progressive_resize(0.5, -1)


def test_trainer_applies_the_configured_schedule(tmp_path):
    from dimaskdino.engine import DIMaskDINOTrainer

    from test_trainer import _TrainerTestModel, _trainer_cfg

    cfg = _trainer_cfg(tmp_path, max_iter=3)
    cfg.INPUT.PROGRESSIVE_RESIZE = CN({"SCALE": 0.5, "UNTIL_ITER": 2})
    trainer = DIMaskDINOTrainer(cfg)
    sizes = []
    trainer.model.register_forward_hook(
        lambda module, args, out: sizes.append({tuple(r["image"].shape[-2:]) for r in args[0]})
    )
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert isinstance(trainer.model, _TrainerTestModel)
    assert sizes == [{(16, 16)}, {(16, 16)}, {(32, 32)}]


def test_lazy_runs_pass_train_progressive_resize_to_the_hook(tmp_path, monkeypatch):
    import dimaskdino.engine.runner as runner
    from dimaskdino.engine.runner import load_run
    from test_runner import LAZY

    class Registered(Exception):
        pass

    def record(trainer, model, scale, until_iter):
        raise Registered(scale, until_iter, trainer.model is model)

    monkeypatch.setattr(runner, "add_progressive_resize", record)
    run = load_run(LAZY, [f"train.output_dir={tmp_path}", "train.device=cpu",
                          "train.progressive_resize.scale=0.5", "train.progressive_resize.until_iter=3"])
    with pytest.raises(Registered) as registered:
        run.train(resume=False)
    assert registered.value.args == (0.5, 3, True)
