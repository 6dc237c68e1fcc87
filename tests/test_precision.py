"""Mixed precision on the CPU (bfloat16 autocast around the training forward pass)."""
from pathlib import Path

import pytest
import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import EventStorage
from torch import nn

from dimaskdino.engine.precision import add_cpu_autocast, build_train_loop, uses_cpu_autocast
from tiny_training import one_thread, painted_image, tiny_cfg, tiny_model  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


class Recorder(nn.Module):
    """Records whether CPU autocast is on and the dtype of a linear layer's output."""

    def __init__(self, fail=False):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.fail = fail
        self.seen = []

    def forward(self, x):
        y = self.linear(x)
        self.seen.append((torch.is_autocast_enabled("cpu"), y.dtype))
        if self.fail:
            raise RuntimeError("boom")
        return {"loss": y.float().square().mean()}


def test_training_forward_is_bfloat16_eval_and_backward_are_float32():
    model = Recorder()
    add_cpu_autocast(model)
    loss = model(torch.randn(2, 4))["loss"]
    assert model.seen[-1] == (True, torch.bfloat16)
    assert not torch.is_autocast_enabled("cpu")  # left after the forward pass
    loss.backward()
    assert model.linear.weight.grad.dtype == torch.float32 and model.linear.weight.dtype == torch.float32
    model.eval()
    model(torch.randn(2, 4))
    assert model.seen[-1] == (False, torch.float32)


def test_autocast_is_left_when_the_forward_pass_fails():
    model = Recorder(fail=True)
    add_cpu_autocast(model)
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.randn(2, 4))
    assert model.seen[-1][0] and not torch.is_autocast_enabled("cpu")


def test_train_loop_choice():
    assert uses_cpu_autocast(True, "cpu")
    assert not uses_cpu_autocast(True, "cuda") and not uses_cpu_autocast(False, "cpu")
    model = Recorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = build_train_loop(model, [torch.randn(2, 4)], optimizer, amp=True, device="cpu")
    assert type(loop) is SimpleTrainer
    with EventStorage():
        loop.run_step()
    assert model.seen[-1] == (True, torch.bfloat16)
    plain = Recorder()
    assert type(build_train_loop(plain, [torch.randn(2, 4)], torch.optim.SGD(plain.parameters(), lr=0.1),
                                 amp=False, device="cpu")) is SimpleTrainer
    plain(torch.randn(2, 4))
    assert plain.seen[-1] == (False, torch.float32)
    if torch.cuda.is_available():
        assert isinstance(build_train_loop(plain.cuda(), [], None, amp=True, device="cuda"), AMPTrainer)


def test_dimaskdino_trains_under_cpu_autocast(one_thread):  # noqa: F811
    """The whole model (DI, BATO, denoising, deformable attention in float32 inside) runs a
    training step under bfloat16 autocast: finite losses close to the float32 ones, float32
    gradients on every trained parameter."""
    cfg = tiny_cfg(REPO)
    batch = [painted_image([(0, (4, 4, 30, 30)), (2, (34, 30, 60, 58))]),
             painted_image([(1, (10, 12, 40, 50))])]
    reference = tiny_model(cfg)
    torch.manual_seed(1)
    expected = reference(batch)
    model = tiny_model(cfg)
    add_cpu_autocast(model)
    torch.manual_seed(1)
    losses = model(batch)
    assert losses.keys() == expected.keys()
    total, total_expected = sum(losses.values()), sum(expected.values())
    assert torch.isfinite(total)
    # bfloat16 keeps 8 bits of mantissa: the summed losses agree to a few percent, not exactly
    assert abs(total.item() - total_expected.item()) < 0.05 * total_expected.item()
    assert total.item() != total_expected.item()  # autocast did change the arithmetic
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
