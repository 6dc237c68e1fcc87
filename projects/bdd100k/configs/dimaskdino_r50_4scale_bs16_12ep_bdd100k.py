"""DI-MaskDINO R50 on BDD100K instance segmentation, 12 epochs: the LazyConfig equivalent of
dimaskdino_r50_4scale_bs16_12ep_bdd100k.yaml (the COCO experiment with BDD100K's data)."""
from ....configs.lazy.common.schedule import step_schedule
from ....configs.lazy.dimaskdino_r50_4scale_bs16_12ep import dataloader, model, optimizer, train

model.sem_seg_head.num_classes = 8
dataloader.train.dataset.names = "bdd100k_ins_seg_train"
dataloader.test.dataset.names = "bdd100k_ins_seg_val"
dataloader.test.mapper.augmentations = [
    dict(dataloader.test.mapper.augmentations[0], short_edge_length=720, max_size=1280)
]
train.max_iter = 5250
train.eval_period = 0
train.checkpointer.period = 1000
train.output_dir = "./output/bdd100k_r50_12ep_lazy"
lr_multiplier = step_schedule(steps=[4813])
