"""DI-MaskDINO with a ResNet-50 backbone, 4 feature levels: the model of the authors'
``dimaskdino_r50_4scale_bs16_*ep.yaml`` as a LazyConfig tree (same modules, same defaults)."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from dimaskdino.modeling import DIMaskDINO, DIMaskDINOPredictor, MaskDINOEncoder, MaskDINOHead
from dimaskdino.modeling.criterion import DIMaskDINOCriterion
from dimaskdino.modeling.matcher import HungarianMatcher

model = L(DIMaskDINO)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res2", "res3", "res4", "res5"],
        freeze_at=0,
    ),
    sem_seg_head=L(MaskDINOHead)(
        num_classes=80,
        pixel_decoder=L(MaskDINOEncoder)(
            input_shape={
                "res2": L(ShapeSpec)(channels=256, stride=4),
                "res3": L(ShapeSpec)(channels=512, stride=8),
                "res4": L(ShapeSpec)(channels=1024, stride=16),
                "res5": L(ShapeSpec)(channels=2048, stride=32),
            },
            transformer_dropout=0.0,
            transformer_nheads=8,
            transformer_dim_feedforward=2048,
            transformer_enc_layers=6,
            transformer_n_points=4,
            conv_dim=256,
            mask_dim=256,
            norm="GN",
            transformer_in_features=["res3", "res4", "res5"],
            common_stride=4,
            total_num_feature_levels=4,
            feature_order="low2high",
        ),
        predictor=L(DIMaskDINOPredictor)(
            num_classes="${..num_classes}",
            hidden_dim="${..pixel_decoder.conv_dim}",
            mask_dim="${..pixel_decoder.mask_dim}",
            num_queries=300,
            first_selected_queries=600,
            num_guiding_tokens=50,
            nheads=8,
            dim_feedforward=2048,
            dec_layers=6,
            ti_layers=2,
            dropout=0.0,
            num_feature_levels="${..pixel_decoder.total_num_feature_levels}",
            initial_pred=True,
            initialize_box_type="mask2box",
            dn="seg",
            dn_noise_scale=0.4,
            dn_num=100,
            di_enabled=True,
            bato_enabled=True,
        ),
    ),
    criterion=L(DIMaskDINOCriterion)(
        num_classes="${..sem_seg_head.num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=4.0, cost_box=5.0, cost_giou=2.0, cost_mask=5.0, cost_dice=5.0,
            num_points="${..num_points}",
        ),
        weights={"loss_ce": 4.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        num_points=12544,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        box_loss=True,
        dn="${..sem_seg_head.predictor.dn}",
        deep_supervision=True,
    ),
    size_divisibility=32,
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    test_topk_per_image=100,
    focus_on_box=False,
)
