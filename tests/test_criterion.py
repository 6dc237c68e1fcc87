"""DIMaskDINOCriterion: each loss term against values worked out by hand on tiny inputs, the
names and weights of the returned losses, denoising and zero-instance batches."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import point_sample

from dimaskdino.modeling.criterion import (
    LOSS_NAMES,
    DIMaskDINOCriterion,
    StackedTargetMasks,
    build_criterion,
    dice_loss,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
)
from dimaskdino.modeling.denoising import DenoisingOutput
from dimaskdino.modeling.matcher import HungarianMatcher
from dimaskdino.modeling.outputs import PredictorOutput, StagePrediction

WEIGHTS = {"loss_ce": 4.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_mask": 5.0, "loss_dice": 3.0}
LN2 = math.log(2)


def _focal(logit, positive):
    """Focal loss of one logit, alpha 0.25, gamma 2, written out."""
    p = 1 / (1 + math.exp(-logit))
    if positive:
        return 0.25 * (1 - p) ** 2 * -math.log(p)
    return 0.75 * p**2 * -math.log(1 - p)


def _criterion(dn="no", **kwargs):
    matcher = HungarianMatcher(num_points=32)
    return DIMaskDINOCriterion(
        num_classes=2, matcher=matcher, weights=WEIGHTS, num_points=32, dn=dn, **kwargs
    )


def _fixed_points(point_logits, point_labels):
    """A stand-in for the point sampler returning given (M, P) values."""

    def sample(pred_masks, target_values):
        assert pred_masks.shape[0] == point_logits.shape[0]
        return point_logits + 0 * pred_masks.sum(), point_labels

    return sample


def _one_instance_case():
    """One image, two queries, two classes, one target of class 1 that query 0 clearly matches."""
    outputs = PredictorOutput(final=StagePrediction(
        logits=torch.tensor([[[-2.0, 3.0], [1.0, -1.0]]], requires_grad=True),
        boxes=torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]]]),
        masks=torch.zeros(1, 2, 4, 4, requires_grad=True),
    ))
    targets = [
        {
            "labels": torch.tensor([1]),
            "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.2]]),
            "masks": torch.ones(1, 16, 16, dtype=torch.bool),
        }
    ]
    return outputs, targets


def test_elementwise_losses_hand_computed():
    assert sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(
        0.25 * 0.25 * LN2
    )
    assert sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(
        0.75 * 0.25 * LN2
    )
    logits = torch.tensor([[0.0, math.log(3)]])
    labels = torch.tensor([[1.0, 0.0]])
    # BCE: ln 2 at the first point, ln(1 + 3) at the second.
    assert sigmoid_ce_loss(logits, labels).item() == pytest.approx(1.5 * LN2)
    # sigmoid = (0.5, 0.75): 1 - (2 * 0.5 + 1) / (1.25 + 1 + 1)
    assert dice_loss(logits, labels).item() == pytest.approx(1 - 2 / 3.25)


def test_final_stage_losses_hand_computed():
    criterion = _criterion()
    criterion.sample_mask_points = _fixed_points(
        torch.tensor([[0.0, math.log(3)]]), torch.tensor([[1.0, 0.0]])
    )
    outputs, targets = _one_instance_case()
    losses = criterion(outputs, targets)

    assert set(losses) == set(LOSS_NAMES)
    # Query 0 is matched to class 1; everything else is background.
    focal = _focal(-2.0, False) + _focal(3.0, True) + _focal(1.0, False) + _focal(-1.0, False)
    assert losses["loss_ce"].item() == pytest.approx(4.0 * focal, rel=1e-5)
    # |0.2 - 0.4| in width only.
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * 0.2, rel=1e-5)
    # Boxes [.4,.4,.6,.6] and [.3,.4,.7,.6]: IoU 0.04 / 0.08, hull = union, so GIoU 0.5.
    assert losses["loss_giou"].item() == pytest.approx(2.0 * 0.5, rel=1e-4)
    assert losses["loss_mask"].item() == pytest.approx(5.0 * 1.5 * LN2, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(3.0 * (1 - 2 / 3.25), rel=1e-5)


def test_losses_are_normalised_by_instances_in_batch():
    criterion = _criterion(box_loss=True)
    outputs, targets = _one_instance_case()
    # A second image whose only target is matched perfectly by its query 0: it adds no box loss
    # but doubles the normaliser.
    outputs = PredictorOutput(final=StagePrediction(
        logits=torch.cat([outputs.final.logits.detach()] * 2),
        boxes=torch.cat([outputs.final.boxes, outputs.final.boxes]),
        masks=torch.zeros(2, 2, 4, 4),
    ))
    second = {
        "labels": torch.tensor([1]),
        "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
        "masks": torch.ones(1, 16, 16, dtype=torch.bool),
    }
    losses = criterion(outputs, targets + [second])
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * 0.2 / 2, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(2.0 * 0.5 / 2, rel=1e-4)


def test_point_sampling_prefers_uncertain_points_and_reads_targets():
    criterion = _criterion(importance_sample_ratio=0.75, oversample_ratio=3.0)
    criterion.num_points = 400
    # Confident logits (|x| = 20) except a vertical band x in [0.25, 0.75) where the logit is 0.
    pred = torch.full((1, 32, 32), 20.0)
    pred[:, :, 8:24] = 0.0
    target = torch.zeros(1, 64, 64)
    target[:, :, 16:48] = 1.0  # the same band, at twice the resolution
    stacked = StackedTargetMasks([{"masks": target}])
    logits, labels = criterion.sample_mask_points(pred, lambda coords: stacked.values_at(torch.tensor([0]), coords))
    assert logits.shape == labels.shape == (1, 400)
    uncertain = (logits.abs() < 10).float().mean().item()
    assert uncertain > 0.75  # 75% importance points, plus the random ones falling in the band
    # Logits and labels come from the same points: inside the band the target is 1, far out 0
    # (up to the few points within half a pixel of the image border, blended with zero padding).
    assert (labels[logits.abs() < 1] > 0.99).float().mean() > 0.9
    assert (labels[logits > 19.9] < 0.01).all()


def test_denoising_indices_layout():
    labels = [torch.tensor([0, 1]), torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    targets = [{"labels": x} for x in labels]
    indices = DIMaskDINOCriterion.denoising_indices(targets, num_groups=3, single_pad=2)
    assert indices[0][0].tolist() == [0, 1, 2, 3, 4, 5]
    assert indices[0][1].tolist() == [0, 1, 0, 1, 0, 1]
    assert indices[1][0].tolist() == [0, 2, 4]
    assert indices[1][1].tolist() == [0, 0, 0]
    assert indices[2][0].numel() == 0


def _denoising(targets, groups):
    single_pad = max(len(t["labels"]) for t in targets)
    pad = groups * single_pad
    batch = len(targets)
    boxes = torch.full((batch, pad, 4), 0.5)
    logits = torch.zeros(batch, pad, 2)
    for b, t in enumerate(targets):
        for g in range(groups):
            n = len(t["labels"])
            boxes[b, g * single_pad : g * single_pad + n] = t["boxes"]
    final = StagePrediction(logits, boxes, torch.zeros(batch, pad, 4, 4))
    return DenoisingOutput(final, [StagePrediction(logits, boxes, final.masks) for _ in range(2)], groups, single_pad,
                           pad)


def test_denoising_losses_hand_computed():
    criterion = _criterion(dn="standard")
    outputs, targets = _one_instance_case()
    outputs.denoising = _denoising(targets, groups=3)
    # Shift the width of the group-1 reconstruction by 0.3: L1 = 0.3 over num_boxes * groups = 3.
    outputs.denoising.final.boxes[0, 1, 2] += 0.3
    losses = criterion(outputs, targets)
    assert losses["loss_bbox_dn"].item() == pytest.approx(5.0 * 0.3 / 3, rel=1e-5)
    # All logits 0: each of the 3 x 2 entries costs the focal loss of p = 0.5; three are positive.
    focal = 3 * 0.25 * 0.25 * LN2 + 3 * 0.75 * 0.25 * LN2
    assert losses["loss_ce_dn"].item() == pytest.approx(4.0 * focal / 3, rel=1e-5)
    assert "loss_mask_dn" not in losses  # "standard" denoising has no mask terms


def test_loss_names_of_every_stage():
    criterion = _criterion(dn="seg")
    outputs, targets = _one_instance_case()
    final = outputs.final
    stage = StagePrediction(final.logits.detach(), final.boxes.detach(), final.masks.detach())
    outputs.aux = [stage, stage]
    outputs.interm = stage
    outputs.ti = [StagePrediction(torch.zeros(1, 5, 2), torch.full((1, 5, 4), 0.3)) for _ in range(2)]
    outputs.denoising = _denoising(targets, groups=2)
    losses = criterion(outputs, targets)
    expected = set()
    for suffix in ["", "_0", "_1", "_interm", "_dn", "_dn_0", "_dn_1"]:
        expected |= {name + suffix for name in LOSS_NAMES}
    for suffix in ["_ti0", "_ti1"]:
        expected |= {name + suffix for name in ("loss_ce", "loss_bbox", "loss_giou")}
    assert set(losses) == expected
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())

    # Without the interm output the first auxiliary layer has no denoising loss (as the authors).
    outputs.interm = None
    losses = criterion(outputs, targets)
    assert "loss_ce_dn_0" not in losses and "loss_ce_dn_1" in losses

    # Without deep supervision only the final, interm and last-layer denoising losses remain.
    shallow = _criterion(dn="seg", deep_supervision=False)
    losses = shallow(outputs, targets)
    assert set(losses) == {n + s for n in LOSS_NAMES for s in ("", "_dn")}


def test_weights_scale_each_term():
    outputs, targets = _one_instance_case()
    points = _fixed_points(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    base = _criterion()
    base.sample_mask_points = points
    doubled = DIMaskDINOCriterion(
        num_classes=2, matcher=HungarianMatcher(num_points=32), num_points=32, dn="no",
        weights={k: 2 * v for k, v in WEIGHTS.items()},
    )
    doubled.sample_mask_points = points
    a, b = base(outputs, targets), doubled(outputs, targets)
    for name in LOSS_NAMES:
        assert b[name].item() == pytest.approx(2 * a[name].item(), rel=1e-5)


def test_missing_or_unknown_weight_is_an_error():
    with pytest.raises(ValueError, match="loss_dice"):
        DIMaskDINOCriterion(
            num_classes=2, matcher=HungarianMatcher(num_points=8),
            weights={k: v for k, v in WEIGHTS.items() if k != "loss_dice"},
        )
    with pytest.raises(ValueError, match="loss_focal"):
        DIMaskDINOCriterion(
            num_classes=2, matcher=HungarianMatcher(num_points=8), weights={**WEIGHTS, "loss_focal": 1.0}
        )


def test_zero_instance_images_give_finite_losses_and_gradients():
    criterion = _criterion(dn="seg")
    generator = torch.Generator().manual_seed(0)
    stage = lambda: StagePrediction(  # noqa: E731
        torch.randn(2, 4, 2, generator=generator).requires_grad_(),
        torch.rand(2, 4, 4, generator=generator).requires_grad_(),
        torch.randn(2, 4, 8, 8, generator=generator).requires_grad_(),
    )
    outputs = PredictorOutput(final=stage(), aux=[stage()], interm=stage(),
                              ti=[StagePrediction(torch.randn(2, 6, 2, requires_grad=True), torch.rand(2, 6, 4))])
    empty = {
        "labels": torch.zeros(0, dtype=torch.long),
        "boxes": torch.zeros(0, 4),
        "masks": torch.zeros(0, 32, 32, dtype=torch.bool),
    }
    losses = criterion(outputs, [empty, dict(empty)])
    assert "loss_mask_dn" in losses and losses["loss_mask_dn"].item() == 0.0
    for name, value in losses.items():
        assert torch.isfinite(value), name
    assert losses["loss_ce"].item() > 0  # every query is pushed towards background
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_mask"].item() == 0.0
    sum(losses.values()).backward()
    assert torch.isfinite(outputs.final.logits.grad).all()
    assert torch.isfinite(outputs.final.masks.grad).all()

    # A batch mixing an empty image with a non-empty one.
    one = {
        "labels": torch.tensor([1]),
        "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
        "masks": torch.ones(1, 32, 32, dtype=torch.bool),
    }
    losses = criterion(PredictorOutput(final=stage()), [empty, one])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() > 0


def test_bad_targets_raise_clear_errors():
    criterion = _criterion()
    outputs, targets = _one_instance_case()
    targets[0]["labels"] = torch.tensor([2])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        criterion(outputs, targets)
    outputs, targets = _one_instance_case()
    outputs.denoising = _denoising(targets, groups=2)
    outputs.denoising.pad_size = 3
    with pytest.raises(ValueError, match="pad_size"):
        _criterion(dn="seg")(outputs, targets)


def _loss_cfg():
    from detectron2.config import CfgNode as CN

    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.SEM_SEG_HEAD = CN({"NUM_CLASSES": 3})
    cfg.MODEL.MaskDINO = CN(
        {
            "CLASS_WEIGHT": 4.0, "BOX_WEIGHT": 5.0, "GIOU_WEIGHT": 2.0, "MASK_WEIGHT": 5.0,
            "DICE_WEIGHT": 5.0, "COST_CLASS_WEIGHT": 4.0, "COST_BOX_WEIGHT": 5.0,
            "COST_GIOU_WEIGHT": 2.0, "COST_MASK_WEIGHT": 5.0, "COST_DICE_WEIGHT": 5.0,
            "TRAIN_NUM_POINTS": 12544, "OVERSAMPLE_RATIO": 3.0, "IMPORTANCE_SAMPLE_RATIO": 0.75,
            "BOX_LOSS": True, "DN": "seg", "DEEP_SUPERVISION": True, "PANO_BOX_LOSS": False,
            "SEMANTIC_CE_LOSS": False,
            "TEST": CN({"SEMANTIC_ON": False, "PANOPTIC_ON": False}),
        }
    )
    return cfg


def test_build_criterion_reads_the_authors_keys():
    cfg = _loss_cfg()
    cfg.MODEL.MaskDINO.DICE_WEIGHT = 7.0
    cfg.MODEL.MaskDINO.COST_GIOU_WEIGHT = 1.5
    criterion = build_criterion(cfg)
    assert criterion.weights == {
        "loss_ce": 4.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_mask": 5.0, "loss_dice": 7.0
    }
    assert criterion.matcher.cost_giou == 1.5 and criterion.matcher.num_points == 12544
    assert criterion.num_classes == 3 and criterion.dn == "seg"
    cfg.MODEL.MaskDINO.PANO_BOX_LOSS = True
    with pytest.raises(ValueError, match="PANO_BOX_LOSS"):
        build_criterion(cfg)


def test_importance_sampling_draws_the_same_points_as_detectron2():
    """Same seed: the same random candidates, the same chosen set and the same random extra points as
    detectron2's PointRend sampler; only the order of the chosen points may differ."""
    from detectron2.projects.point_rend.point_features import get_uncertain_point_coords_with_randomness

    from dimaskdino.modeling.criterion import mask_uncertainty, uncertain_point_coords

    logits = torch.randn(5, 1, 16, 16) * 3
    torch.manual_seed(3)
    ours = uncertain_point_coords(logits, 112, 3.0, 0.75)
    torch.manual_seed(3)
    reference = get_uncertain_point_coords_with_randomness(logits, mask_uncertainty, 112, 3.0, 0.75)
    assert ours.shape == reference.shape == (5, 112, 2)
    torch.testing.assert_close(ours[:, 84:], reference[:, 84:], rtol=0, atol=0)  # the uniform points

    def as_sorted(points):  # each row's chosen points, in a canonical order
        keys = points[..., 0] * 4 + points[..., 1]
        return torch.gather(points, 1, keys.argsort(dim=1).unsqueeze(-1).expand(-1, -1, 2))

    torch.testing.assert_close(as_sorted(ours[:, :84]), as_sorted(reference[:, :84]), rtol=0, atol=0)


def test_stacked_target_masks_read_each_pair_like_its_own_gathered_mask():
    """values_at samples mask rows[m] at coords[m] for any multiplicity of rows (denoising groups
    repeat targets, matching may leave some out): equal, bit for bit, to sampling the gathered float
    masks pair by pair, and to a float64 bilinear reference."""
    generator = torch.Generator().manual_seed(0)
    targets = [
        {"masks": torch.rand(3, 24, 20, generator=generator) > 0.5},
        {"masks": torch.zeros(0, 24, 20, dtype=torch.bool)},
        {"masks": torch.rand(2, 24, 20, generator=generator) > 0.3},
    ]
    stacked = StackedTargetMasks(targets)
    assert stacked.masks.dtype == torch.float32 and stacked.masks.shape == (5, 24, 20)
    assert stacked.offsets == [0, 3, 3]
    indices = [(torch.tensor([4, 0, 2, 1]), torch.tensor([2, 0, 2, 1])), (torch.zeros(0, dtype=torch.long),) * 2,
               (torch.tensor([1, 3]), torch.tensor([1, 1]))]
    rows = stacked.global_index(indices)
    assert rows.tolist() == [2, 0, 2, 1, 4, 4]  # row 3 (image 2's first target) unused, 2 and 4 twice
    coords = torch.rand(6, 50, 2, generator=generator) * 1.2 - 0.1  # some points outside [0, 1]
    got = stacked.values_at(rows, coords)
    gathered = stacked.masks[rows][:, None]
    expected = point_sample(gathered, coords, align_corners=False)[:, 0]
    assert torch.equal(got, expected)
    reference = F.grid_sample(gathered.double(), (2 * coords.double() - 1)[:, :, None], align_corners=False)[:, 0, :, 0]
    torch.testing.assert_close(got.double(), reference, rtol=0, atol=1e-6)
    assert stacked.values_at(rows[:0], coords[:0]).shape == (0, 50)
