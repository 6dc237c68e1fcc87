#!/usr/bin/env python
"""
Train or evaluate DI-MaskDINO with detectron2.

    # yaml (yacs) config, KEY VALUE overrides
    python train_net.py --config-file configs/embedded/dimaskdino_r18_embedded.yaml
    python train_net.py --config-file configs/dimaskdino_r50_4scale_bs16_12ep.yaml --num-gpus 8
    # Python LazyConfig, key=value overrides
    python train_net.py --config-file configs/lazy/dimaskdino_r18_embedded.py train.max_iter=100
    # evaluation only: COCO box + mask AP, throughput, latency and peak memory
    python train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS model_final.pth
    # continue an interrupted run from the last checkpoint in its OUTPUT_DIR
    python train_net.py --config-file <cfg> --resume

Multi-GPU / multi-machine runs use detectron2's ``launch`` (torch.distributed):
``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``.
"""
from detectron2.engine import default_argument_parser, launch

import dimaskdino.data  # noqa: F401  (registers the datasets)
import dimaskdino.modeling  # noqa: F401  (registers the model)
from dimaskdino.engine import runner


def setup(args):
    """The run view of the config file, set up and checked (device, datasets, weights)."""
    return runner.prepare(args)


def main(args):
    return runner.main(args)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
