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

Several processes (torch.distributed, see ``dimaskdino.engine.launch``): ``--num-gpus N`` starts N
processes per machine, one per GPU (NCCL), or N CPU processes (gloo) on a machine without GPU;
``--num-machines``, ``--machine-rank``, ``--dist-url`` for several machines. Started by torchrun or
SLURM (RANK/WORLD_SIZE, MASTER_ADDR/MASTER_PORT set), every process joins that job instead:

    torchrun --nproc_per_node 2 train_net.py --config-file <cfg>
"""
import dimaskdino.data  # noqa: F401  (registers the datasets)
import dimaskdino.modeling  # noqa: F401  (registers the model)
from dimaskdino.engine import runner
from dimaskdino.engine.launch import distributed_argument_parser, launch


def setup(args):
    """The run view of the config file, set up and checked (device, datasets, weights)."""
    return runner.prepare(args)


def main(args):
    return runner.main(args)


if __name__ == "__main__":
    args = distributed_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
