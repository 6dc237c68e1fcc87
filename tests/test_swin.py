"""The Swin backbone (timm-based) with random weights."""
import pytest
import torch

from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model

from test_model import smooth_image, tiny_config


def swin_config(*opts):
    return tiny_config(
        "MODEL.BACKBONE.NAME", "D2SwinTransformer", "MODEL.SWIN.EMBED_DIM", 32, "MODEL.SWIN.DEPTHS", [2, 2, 2, 2],
        "MODEL.SWIN.NUM_HEADS", [1, 2, 4, 8], "MODEL.SWIN.DROP_PATH_RATE", 0.0, *opts,
    )


def test_registered_under_the_authors_name():
    cfg = swin_config()
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    assert type(build_backbone(cfg)) is BACKBONE_REGISTRY.get("SwinTransformerBackbone")


def test_lazy_construction_from_arguments():
    """@configurable: built from keyword arguments as from the config, same modules."""
    from dimaskdino.modeling.backbone.swin import SwinTransformerBackbone

    cfg = swin_config()
    s = cfg.MODEL.SWIN
    torch.manual_seed(0)
    from_cfg = build_backbone(cfg)
    torch.manual_seed(0)
    from_args = SwinTransformerBackbone(embed_dim=s.EMBED_DIM, depths=s.DEPTHS, num_heads=s.NUM_HEADS,
                                        window_size=s.WINDOW_SIZE, out_features=s.OUT_FEATURES,
                                        drop_path_rate=s.DROP_PATH_RATE)
    assert repr(from_cfg) == repr(from_args)
    a, b = from_cfg.state_dict(), from_args.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_output_shapes_and_padding_to_windows():
    backbone = build_backbone(swin_config()).eval()
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (32, 4), "res3": (64, 8), "res4": (128, 16), "res5": (256, 32)
    }
    assert backbone.size_divisibility == 32
    # 96 x 160: the stride-4 map (24 x 40) is not a multiple of the 7 x 7 window
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        out = backbone(x)
    for name, (c, s) in {"res2": (32, 4), "res3": (64, 8), "res4": (128, 16), "res5": (256, 32)}.items():
        assert out[name].shape == (2, c, 96 // s, 160 // s)
    # each image is processed on its own: the batch does not mix images
    with torch.no_grad():
        alone = backbone(x[1:])
    assert torch.allclose(out["res4"][1:], alone["res4"], atol=1e-5)


def test_features_are_the_stage_outputs_through_their_norms():
    backbone = build_backbone(swin_config()).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = backbone(x)
        h = backbone.patch_embed(x)
        for i, stage in enumerate(backbone.layers):
            h = stage(h)
            expected = torch.nn.functional.layer_norm(h, h.shape[-1:], getattr(backbone, f"norm{i}").weight,
                                                      getattr(backbone, f"norm{i}").bias)
            assert torch.allclose(out[f"res{i + 2}"], expected.permute(0, 3, 1, 2), atol=1e-6)


def test_windows_keep_their_size_and_shift_on_small_maps():
    """As the Swin detection backbones: even the 2 x 2 last stage of a 64 x 64 input is padded to one
    7 x 7 window and its odd blocks are shifted (timm would otherwise shrink the window)."""
    backbone = build_backbone(swin_config()).eval()
    with torch.no_grad():
        backbone(torch.randn(1, 3, 64, 64))
    last = backbone.layers[3].blocks[1]
    assert last.window_size == (7, 7) and last.shift_size == (3, 3)


def test_unsupported_settings_are_named():
    with pytest.raises(ValueError, match="MODEL.SWIN.APE"):
        build_backbone(swin_config("MODEL.SWIN.APE", True))
    with pytest.raises(ValueError, match="res7"):
        build_backbone(swin_config("MODEL.SWIN.OUT_FEATURES", ["res7"]))


def test_dimaskdino_with_a_swin_backbone_predicts():
    torch.manual_seed(0)
    model = build_model(swin_config()).eval()
    with torch.no_grad():
        inst = model([{"image": smooth_image(0, 128, 160)}])[0]["instances"]
    assert len(inst) == 30 and inst.pred_masks.shape == (30, 128, 160)
