"""One or two training steps of a tiny DI-MaskDINO: the loss names of every stage, a gradient for
every parameter, and finite losses on images without instances."""
from pathlib import Path

import pytest
import torch

from dimaskdino.engine import build_optimizer_from_cfg
from tiny_training import TWO_IMAGES, one_thread, painted_image, tiny_cfg, tiny_model  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
TERMS = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")

# Parameters allowed to get no gradient in a training step, with the reason. Empty: the model
# uses every parameter (the denoising label embedding included, also when a batch has no
# instances and so no denoising queries).
INTENTIONALLY_UNUSED = {}


def _expected_loss_names(dec_layers, ti_layers):
    # aux outputs: the initial prediction and decoder layers 0..D-2
    suffixes = [""] + [f"_{i}" for i in range(dec_layers)] + ["_interm", "_dn"]
    suffixes += [f"_dn_{i}" for i in range(dec_layers)]
    names = {term + suffix for term in TERMS for suffix in suffixes}
    names |= {term + f"_ti{j}" for term in TERMS[:3] for j in range(ti_layers)}
    return names


def _step(model, optimizer, batch):
    losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    return losses


@pytest.mark.parametrize("di_and_bato", [True, False], ids=["DI-MaskDINO", "MaskDINO"])
def test_every_parameter_gets_a_gradient(di_and_bato, one_thread):
    cfg = tiny_cfg(REPO, DI_ENABLED=di_and_bato, BATO_ENABLED=di_and_bato)
    model = tiny_model(cfg)
    optimizer = build_optimizer_from_cfg(cfg, model)
    batch = [painted_image(objects) for objects in TWO_IMAGES]

    losses = _step(model, optimizer, batch)
    ti_layers = cfg.MODEL.MaskDINO.TI_LAYERS if di_and_bato else 0
    assert set(losses) == _expected_loss_names(cfg.MODEL.MaskDINO.DEC_LAYERS, ti_layers)
    assert all(torch.isfinite(v) for v in losses.values())
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    unreached = sorted(n for n, p in trainable.items() if p.grad is None and n not in INTENTIONALLY_UNUSED)
    assert not unreached, f"parameters outside the autograd graph: {unreached}"

    # At initialisation some gradients are exactly zero by design: the zero-initialised last
    # layer of the box heads blocks their earlier layers, and the zero-initialised sampling
    # offsets / attention weights of deformable attention block the encoder's level embedding.
    # After one update every parameter must get a non-zero gradient.
    optimizer.step()
    _step(model, optimizer, batch)
    zero = sorted(
        n for n, p in trainable.items()
        if n not in INTENTIONALLY_UNUSED and (p.grad is None or not p.grad.abs().sum() > 0)
    )
    assert not zero, f"parameters with no gradient after one update: {zero}"


def test_images_without_instances_train_without_nan(one_thread):
    cfg = tiny_cfg(REPO)
    model = tiny_model(cfg)
    optimizer = build_optimizer_from_cfg(cfg, model)
    empty = painted_image([])
    for batch in ([empty, painted_image(TWO_IMAGES[0])], [empty, painted_image([])]):
        losses = _step(model, optimizer, batch)
        bad = [k for k, v in losses.items() if not torch.isfinite(v)]
        assert not bad, f"non-finite losses {bad}"
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
    # A batch without any instance has no denoising queries: those losses are reported as 0.
    assert losses["loss_ce_dn"].item() == 0.0 and losses["loss_ce"].item() > 0
