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
import json
import logging
import os

import torch
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import print_csv_format, verify_results
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

import dimaskdino.data  # noqa: F401  (registers the datasets)
import dimaskdino.modeling  # noqa: F401  (registers the model)
from dimaskdino.data import check_config_datasets
from dimaskdino.engine import DIMaskDINOTrainer
from dimaskdino.evaluation import inference_with_benchmark
from dimaskdino.utils import lazy_training
from dimaskdino.utils.config_files import is_lazy_config, load_yaml_config, setup_run
from dimaskdino.utils.weights import check_weights_file, load_weights

logger = logging.getLogger("dimaskdino")


def check_device(device: str, key: str) -> None:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is '{device}' but no CUDA device is visible; set {key} to 'cpu'.")


def setup(args):
    cfg = load_yaml_config(args.config_file, args.opts)
    cfg.freeze()
    setup_run(cfg, args)
    check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    check_config_datasets(cfg, list(cfg.DATASETS.TEST) if args.eval_only else None)
    check_weights_file(cfg.MODEL.WEIGHTS)
    return cfg


def save_benchmark(output_dir: str, dataset_name: str, report) -> None:
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, f"inference_benchmark_{dataset_name}.json")
        with PathManager.open(path, "w") as f:
            json.dump(report.as_dict(), f, indent=2)


def evaluate(cfg, model):
    """COCO box + mask AP on every DATASETS.TEST dataset, with an inference benchmark."""
    results = {}
    for name in cfg.DATASETS.TEST:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference", name)
        loader = DIMaskDINOTrainer.build_test_loader(cfg, name)
        evaluator = DIMaskDINOTrainer.build_evaluator(cfg, name, output_dir)
        results[name], report = inference_with_benchmark(model, loader, evaluator)
        if comm.is_main_process():
            logger.info(f"Evaluation results for {name} in csv format:")
            print_csv_format(results[name])
            print(f"Inference benchmark on {name}:\n{report.table()}", flush=True)
            save_benchmark(cfg.OUTPUT_DIR, name, report)
    if len(results) == 1:
        results = next(iter(results.values()))
    if comm.is_main_process():
        verify_results(cfg, results)
    return results


def main_yaml(args):
    cfg = setup(args)
    if args.eval_only:
        model = DIMaskDINOTrainer.build_model(cfg)
        load_weights(model, cfg.MODEL.WEIGHTS, save_dir=cfg.OUTPUT_DIR, resume=args.resume)
        return evaluate(cfg, model)
    trainer = DIMaskDINOTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main(args):
    if is_lazy_config(args.config_file):
        return lazy_training.main(args)
    return main_yaml(args)


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
