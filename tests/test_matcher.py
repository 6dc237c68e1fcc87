"""HungarianMatcher against a brute-force search over all assignments, with costs recomputed here
pair by pair from their textbook formulas."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dimaskdino.modeling.matcher import HungarianMatcher, focal_class_cost
from dimaskdino.modeling.outputs import StagePrediction

WEIGHTS = dict(cost_class=4.0, cost_box=5.0, cost_giou=2.0, cost_mask=5.0, cost_dice=5.0)


def _xyxy(box):
    cx, cy, w, h = box
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _giou(a, b):
    ax0, ay0, ax1, ay1 = _xyxy(a)
    bx0, by0, bx1, by1 = _xyxy(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _values_at(mask, coords):
    """Bilinear values of an (H, W) map at (P, 2) normalised (x, y) points, zero outside."""
    grid = (2 * coords - 1).view(1, 1, -1, 2)
    return F.grid_sample(mask[None, None].double(), grid.double(), align_corners=False).view(-1)


def _reference_cost(outputs, target, b, coords, cost_types):
    """(Q, N) weighted cost, one pair at a time."""
    logits = outputs.logits[b].double()
    num_queries, num_targets = logits.shape[0], len(target["labels"])
    cost = torch.zeros(num_queries, num_targets, dtype=torch.float64)
    for q, n in itertools.product(range(num_queries), range(num_targets)):
        p = torch.sigmoid(logits[q, target["labels"][n]]).item()
        pos = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8)
        neg = 0.75 * p**2 * -math.log(1 - p + 1e-8)
        total = WEIGHTS["cost_class"] * (pos - neg)
        if "box" in cost_types:
            pb = outputs.boxes[b][q].tolist()
            gb = target["boxes"][n].tolist()
            total += WEIGHTS["cost_box"] * sum(abs(x - y) for x, y in zip(pb, gb))
            total -= WEIGHTS["cost_giou"] * _giou(pb, gb)
        if "mask" in cost_types:
            x = _values_at(outputs.masks[b][q], coords)
            t = _values_at(target["masks"][n].float(), coords)
            bce = F.binary_cross_entropy_with_logits(x, t).item()
            s = torch.sigmoid(x)
            dice = 1 - (2 * (s * t).sum().item() + 1) / (s.sum().item() + t.sum().item() + 1)
            total += WEIGHTS["cost_mask"] * bce + WEIGHTS["cost_dice"] * dice
        cost[q, n] = total
    return cost


def _brute_force_min(cost):
    """Minimal total cost over all one-to-one assignments of min(Q, N) pairs."""
    num_queries, num_targets = cost.shape
    if num_targets <= num_queries:
        return min(
            sum(cost[q, n] for n, q in enumerate(queries))
            for queries in itertools.permutations(range(num_queries), num_targets)
        )
    return min(
        sum(cost[q, n] for q, n in enumerate(chosen))
        for chosen in itertools.permutations(range(num_targets), num_queries)
    )


def _random_case(generator, batch, num_queries, num_targets, num_classes=3, size=8):
    def boxes(n):
        centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
        return torch.cat([centre, wh], dim=1)

    outputs = StagePrediction(
        logits=torch.randn(batch, num_queries, num_classes, generator=generator) * 2,
        boxes=torch.stack([boxes(num_queries) for _ in range(batch)]),
        masks=torch.randn(batch, num_queries, size, size, generator=generator) * 3,
    )
    targets = [
        {
            "labels": torch.randint(0, num_classes, (n,), generator=generator),
            "boxes": boxes(n),
            "masks": torch.rand(n, 2 * size, 2 * size, generator=generator) > 0.5,
        }
        for n in num_targets
    ]
    return outputs, targets


def _fixed_points(matcher, num_points, seed):
    coords = torch.rand(1, num_points, 2, generator=torch.Generator().manual_seed(seed))
    matcher.random_point_coords = lambda count, device: coords.expand(count, -1, -1).to(device)
    return coords[0]


@pytest.mark.parametrize(
    "num_queries,num_targets,cost_types",
    [
        (5, (3, 2), ("class", "box", "mask")),
        (6, (4, 1), ("class", "box", "mask")),
        (3, (5, 3), ("class", "box", "mask")),  # more targets than queries
        (6, (4, 3), ("class", "box")),
        (4, (2, 0, 3, 1), ("class", "box", "mask")),  # an image without targets amid the batch
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(num_queries, num_targets, cost_types, seed):
    generator = torch.Generator().manual_seed(seed)
    outputs, targets = _random_case(generator, len(num_targets), num_queries, num_targets)
    matcher = HungarianMatcher(num_points=64, **WEIGHTS)
    coords = _fixed_points(matcher, 64, seed)

    indices = matcher(outputs, targets, cost_types=cost_types)

    for b, (target, (query_idx, target_idx)) in enumerate(zip(targets, indices)):
        assert query_idx.dtype == torch.int64 and target_idx.dtype == torch.int64
        expected_pairs = min(num_queries, len(target["labels"]))
        assert len(query_idx) == len(target_idx) == expected_pairs
        assert len(set(query_idx.tolist())) == expected_pairs
        assert len(set(target_idx.tolist())) == expected_pairs
        cost = _reference_cost(outputs, target, b, coords, cost_types)
        chosen = sum(cost[q, n] for q, n in zip(query_idx.tolist(), target_idx.tolist()))
        assert chosen == pytest.approx(float(_brute_force_min(cost)), abs=1e-4)


def test_box_only_matching_needs_no_masks_and_ignores_them():
    generator = torch.Generator().manual_seed(3)
    outputs, targets = _random_case(generator, 2, 6, (3, 2))
    matcher = HungarianMatcher(num_points=16, **WEIGHTS)
    box_only = StagePrediction(outputs.logits, outputs.boxes)
    indices = matcher(box_only, targets, cost_types=("class", "box"))
    for b, (target, (query_idx, target_idx)) in enumerate(zip(targets, indices)):
        cost = _reference_cost(outputs, target, b, None, ("class", "box"))
        chosen = sum(cost[q, n] for q, n in zip(query_idx.tolist(), target_idx.tolist()))
        assert chosen == pytest.approx(float(_brute_force_min(cost)), abs=1e-5)


def test_zero_ground_truth_gives_empty_indices():
    generator = torch.Generator().manual_seed(4)
    outputs, targets = _random_case(generator, 3, 4, (0, 2, 0))
    indices = HungarianMatcher(num_points=16, **WEIGHTS)(outputs, targets)
    assert [len(q) for q, _ in indices] == [0, 2, 0]
    assert all(q.dtype == torch.int64 and t.dtype == torch.int64 for q, t in indices)


def test_points_are_drawn_per_image_with_targets_as_one_draw_per_image_in_turn():
    """The batched draw gives the numbers one draw per image (with targets) in turn gives: each
    image's assignment is optimal for costs measured on the points drawn that way."""
    generator = torch.Generator().manual_seed(7)
    outputs, targets = _random_case(generator, 4, 5, (3, 0, 2, 4))
    torch.manual_seed(11)
    indices = HungarianMatcher(num_points=32, **WEIGHTS)(outputs, targets)
    after = torch.rand(1)
    torch.manual_seed(11)
    points = {b: torch.rand(1, 32, 2)[0] for b in (0, 2, 3)}
    assert torch.equal(torch.rand(1), after)  # no other draw
    for b, (query_idx, target_idx) in enumerate(indices):
        if b == 1:
            assert len(query_idx) == 0
            continue
        cost = _reference_cost(outputs, targets[b], b, points[b], ("class", "box", "mask"))
        chosen = sum(cost[q, n] for q, n in zip(query_idx.tolist(), target_idx.tolist()))
        assert chosen == pytest.approx(float(_brute_force_min(cost)), abs=1e-4)


def test_non_finite_cost_in_a_later_image_names_that_image():
    generator = torch.Generator().manual_seed(8)
    outputs, targets = _random_case(generator, 3, 4, (2, 0, 1))
    outputs.masks[2, 3] = float("inf")  # every sampled point
    with pytest.raises(FloatingPointError, match=r"image 2 .*\['mask'"):
        HungarianMatcher(num_points=16, **WEIGHTS)(outputs, targets)


def test_focal_class_cost_hand_computed():
    # p = sigmoid(0) = 0.5: positive cost 0.25 * 0.25 * ln 2, negative cost 0.75 * 0.25 * ln 2.
    cost = focal_class_cost(torch.zeros(1, 3), torch.tensor([2]))
    assert cost.item() == pytest.approx(-0.125 * math.log(2), rel=1e-5)
    # A confident correct prediction costs less than a confident wrong one.
    logits = torch.tensor([[6.0, -6.0], [-6.0, 6.0]])
    cost = focal_class_cost(logits, torch.tensor([0]))
    assert cost[0, 0] < cost[1, 0]


def test_non_finite_predictions_raise_naming_the_term():
    generator = torch.Generator().manual_seed(5)
    outputs, targets = _random_case(generator, 1, 4, (2,))
    outputs.boxes[0, 1, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="box"):
        HungarianMatcher(num_points=16, **WEIGHTS)(outputs, targets)


def test_unknown_cost_type_is_rejected():
    generator = torch.Generator().manual_seed(6)
    outputs, targets = _random_case(generator, 1, 4, (2,))
    with pytest.raises(ValueError, match="cost_types"):
        HungarianMatcher(num_points=16)(outputs, targets, cost_types=("class", "boxes"))
