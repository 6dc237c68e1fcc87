"""The main job as a LazyConfig: the equivalent of configs/embedded/dimaskdino_r18_embedded.yaml
(a small DI-MaskDINO trained from scratch on the embedded shapes dataset on the CPU).

    python train_net.py --config-file configs/lazy/dimaskdino_r18_embedded.py train.max_iter=100
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from .common.data_embedded import dataloader
from .common.optim import optimizer
from .common.schedule import step_schedule
from .common.train import train
from .models.dimaskdino_r50 import model

# ResNet-18, random init, trainable BatchNorm
model.backbone.stem.norm = "BN"
model.backbone.stages.depth = 18
model.backbone.stages.norm = "BN"
del model.backbone.stages.stride_in_1x1  # a bottleneck-only argument
model.sem_seg_head.num_classes = 4
decoder = model.sem_seg_head.pixel_decoder
decoder.input_shape = {
    name: L(ShapeSpec)(channels=channels, stride=stride)
    for name, channels, stride in [("res2", 64, 4), ("res3", 128, 8), ("res4", 256, 16), ("res5", 512, 32)]
}
decoder.transformer_nheads = 4
decoder.transformer_dim_feedforward = 256
decoder.transformer_enc_layers = 1
decoder.conv_dim = 64
decoder.mask_dim = 64
decoder.total_num_feature_levels = 3
predictor = model.sem_seg_head.predictor
predictor.nheads = 4
predictor.dim_feedforward = 256
predictor.dec_layers = 3
predictor.ti_layers = 1
predictor.num_queries = 20
predictor.first_selected_queries = 40
predictor.num_guiding_tokens = 10
predictor.dn_num = 20
predictor.initialize_box_type = "no"
model.criterion.num_points = 784
model.test_topk_per_image = 50

train.max_iter = 1050
train.progressive_resize = dict(scale=0.75, until_iter=650)  # 96x96 batches first, then 128x128
train.device = "cpu"
train.amp.enabled = True  # bfloat16 autocast on the CPU
train.seed = 0
train.eval_period = 0
train.checkpointer.period = 300
train.output_dir = "./output/embedded_r18_lazy"
optimizer.base_lr = 2e-3
optimizer.backbone_multiplier = 1.0
lr_multiplier = step_schedule(steps=[945], warmup_iters=50)
del decoder, predictor  # aliases only: not part of the config
