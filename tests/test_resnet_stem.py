"""The ResNet stem run channels-last: detectron2's BasicStem's outputs and gradients."""
import copy

import pytest
import torch
from detectron2.modeling.backbone.resnet import BasicStem

from dimaskdino.modeling.backbone import ChannelsLastPoolStem, use_channels_last_stem_pooling


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_outputs_and_gradients_as_detectron2s_stem(dtype):
    torch.manual_seed(0)
    reference = BasicStem(3, 16, norm="BN")
    ours = copy.deepcopy(reference)
    assert use_channels_last_stem_pooling(type("Backbone", (), {"stem": ours})())
    assert type(ours) is ChannelsLastPoolStem
    assert ours.state_dict().keys() == reference.state_dict().keys()
    image = torch.randn(2, 3, 37, 29)
    outputs, grads = [], []
    for stem in (reference, ours):
        x = image.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = stem(x)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outputs.append(y)
        grads.append((x.grad, stem.conv1.weight.grad))
    assert outputs[1].is_contiguous() and outputs[1].shape == (2, 16, 10, 8)
    # the convolution may sum in another order: float32 rounding, or one bfloat16 step (2^-8)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(outputs[1].float(), outputs[0].float(), **tol)
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected, **tol)


def test_other_stems_are_left_alone():
    class OtherStem(BasicStem):
        pass

    backbone = type("Backbone", (), {"stem": OtherStem(3, 8)})()
    assert not use_channels_last_stem_pooling(backbone)
    assert type(backbone.stem) is OtherStem
    assert not use_channels_last_stem_pooling(object())
