"""DI-MaskDINO R50 4-scale, batch 16, 12 epochs on COCO: the LazyConfig equivalent of
configs/dimaskdino_r50_4scale_bs16_12ep.yaml.

    python train_net.py --config-file configs/lazy/dimaskdino_r50_4scale_bs16_12ep.py --num-gpus 8 \
        train.init_checkpoint=detectron2://ImageNetPretrained/torchvision/R-50.pkl
"""
from .common.data_coco_lsj import dataloader
from .common.optim import optimizer
from .common.schedule import step_schedule
from .common.train import train
from .models.dimaskdino_r50 import model

train.max_iter = 88500
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/dimaskdino_r50_4scale_bs16_12ep"
lr_multiplier = step_schedule(steps=[81125])
