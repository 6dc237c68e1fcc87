#!/usr/bin/env python
"""
Box and mask AP of every prediction stage (two-stage proposals, DI token-interaction layers, initial
prediction, each decoder layer) on cfg.DATASETS.TEST[0]: the detection-segmentation imbalance of
DI-MaskDINO's paper, measured on your own checkpoint.

    python tools/layerwise_ap.py --config-file configs/embedded/dimaskdino_r18_embedded.yaml \\
        --json layerwise.json --plot layerwise.png MODEL.WEIGHTS output/embedded_r18/model_final.pth

Prints a table (stage, box AP, mask AP, box AP - mask AP), writes the plot (default
OUTPUT_DIR/layerwise_ap.png) and, with --json, the numbers. Per-stage COCO predictions go to
OUTPUT_DIR/layerwise/<dataset>/<stage>/. Runs in several processes like train_net.py
(``--num-gpus N``, torchrun): each evaluates its shard, rank 0 prints and writes.
"""
import os

from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger


import dimaskdino.data  # noqa: F401  (registers the datasets)
import dimaskdino.modeling  # noqa: F401  (registers the model)
from dimaskdino.data import check_config_datasets
from dimaskdino.engine.devices import check_device
from dimaskdino.engine.launch import distributed_argument_parser, launch
from dimaskdino.evaluation.layerwise import (
    build_stage_evaluators,
    format_table,
    layerwise_inference,
    model_stages,
    plot_layerwise_ap,
    write_json,
)
from dimaskdino.utils.config_files import load_yaml_config
from dimaskdino.utils.weights import load_weights


def parse_args(argv=None):
    parser = distributed_argument_parser()
    parser.add_argument("--json", default="", metavar="FILE", help="write the per-stage numbers to this JSON file")
    parser.add_argument("--plot", default="", metavar="FILE",
                        help="PNG line plot of AP per stage (default: OUTPUT_DIR/layerwise_ap.png)")
    return parser.parse_args(argv)


def main(args):
    cfg = load_yaml_config(args.config_file, args.opts)
    cfg.freeze()
    setup_logger(name="dimaskdino", distributed_rank=comm.get_rank())
    setup_logger(name="detectron2", distributed_rank=comm.get_rank())
    check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST is empty: name the dataset to evaluate, e.g. DATASETS.TEST \"('x',)\"")
    dataset_name = cfg.DATASETS.TEST[0]
    check_config_datasets(cfg, [dataset_name])

    model = build_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS)
    model.eval()
    stages = model_stages(model)
    output_dir = os.path.join(cfg.OUTPUT_DIR, "layerwise", dataset_name)
    evaluators = build_stage_evaluators(cfg, dataset_name, stages, output_dir)
    # each process evaluates its shard of the images; the evaluators gather them on rank 0
    results = layerwise_inference(model, build_detection_test_loader(cfg, dataset_name), evaluators)
    if not comm.is_main_process():
        return results
    print(f"Layer-wise AP on {dataset_name}:\n{format_table(results)}", flush=True)
    plot_path = args.plot or os.path.join(cfg.OUTPUT_DIR, "layerwise_ap.png")
    plot_layerwise_ap(results, plot_path, title=f"AP per stage on {dataset_name}")
    print(f"plot written to {plot_path}")
    if args.json:
        write_json(results, args.json, dataset_name)
        print(f"numbers written to {args.json}")
    return results


if __name__ == "__main__":
    args = parse_args()
    launch(main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,))
