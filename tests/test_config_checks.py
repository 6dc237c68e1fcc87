"""Run settings of the wrong value or type fail before any model or data is built, naming the key,
the value and what is expected (yaml and LazyConfig)."""
import os

import pytest
from detectron2.engine import default_argument_parser

import dimaskdino.data  # noqa: F401  (registers the datasets)
from dimaskdino.engine import runner
from dimaskdino.engine.runner import LazyRun, check_run
from dimaskdino.utils.config_files import load_lazy_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

YAML = os.path.join(REPO, "configs", "embedded", "dimaskdino_r18_embedded.yaml")
LAZY = os.path.join(REPO, "configs", "lazy", "dimaskdino_r18_embedded.py")


def _args(*argv):
    return default_argument_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("SOLVER.IMS_PER_BATCH", "0", "SOLVER.IMS_PER_BATCH must be positive, got 0"),
        ("SOLVER.IMS_PER_BATCH", "-2", "SOLVER.IMS_PER_BATCH must be positive, got -2"),
        ("SOLVER.MAX_ITER", "0", "SOLVER.MAX_ITER must be positive, got 0"),
        ("SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD must be positive"),
        ("SOLVER.BASE_LR", "0.0", "SOLVER.BASE_LR must be positive"),
        ("DATALOADER.NUM_WORKERS", "-1", "DATALOADER.NUM_WORKERS must be non-negative"),
    ],
)
def test_yaml_bad_values_fail_in_setup(tmp_path, key, value, message, monkeypatch):
    # the dataset check comes after the value check: it must not be reached
    monkeypatch.setattr(runner, "check_config_datasets", lambda *a: pytest.fail("value check came too late"))
    with pytest.raises(ValueError, match=message):
        runner.prepare(_args("--config-file", YAML, key, value, "OUTPUT_DIR", str(tmp_path)))


def test_yaml_wrong_type_names_key_value_and_type(tmp_path):
    with pytest.raises(ValueError, match=r"Type mismatch.*int.*str.*abc.*SOLVER.MAX_ITER"):
        runner.prepare(_args("--config-file", YAML, "SOLVER.MAX_ITER", "abc", "OUTPUT_DIR", str(tmp_path)))


def test_yaml_eval_only_ignores_training_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "check_config_datasets", lambda *a: None)
    run = runner.prepare(_args("--config-file", YAML, "--eval-only", "SOLVER.IMS_PER_BATCH", "0",
                               "OUTPUT_DIR", str(tmp_path)))
    assert run.cfg.SOLVER.IMS_PER_BATCH == 0


@pytest.mark.parametrize(
    "override, error, message",
    [
        ("train.max_iter=abc", TypeError, r"train.max_iter must be a number \(like 1050\), got 'abc'"),
        ("train.amp.enabled=1", TypeError, r"train.amp.enabled must be True or False, got 1"),
        ("optimizer.base_lr=fast", TypeError, r"optimizer.base_lr must be a number .*'fast'"),
    ],
)
def test_lazy_override_of_the_wrong_type_is_named(override, error, message):
    with pytest.raises(error, match=message):
        load_lazy_config(LAZY, [override])


@pytest.mark.parametrize(
    "override, error, message",
    [
        ("dataloader.train.total_batch_size=0", ValueError, "dataloader.train.total_batch_size must be positive, got 0"),
        ("train.max_iter=-5", ValueError, "train.max_iter must be positive, got -5"),
        ("train.max_iter=2.5", TypeError, r"train.max_iter must be an integer, got 2.5 \(float\)"),
        ("train.checkpointer.period=0", ValueError, "train.checkpointer.period must be positive"),
    ],
)
def test_lazy_bad_values_fail_before_the_dataset_check(tmp_path, monkeypatch, override, error, message):
    monkeypatch.setattr(runner, "check_datasets", lambda *a, **k: pytest.fail("value check came too late"))
    cfg = load_lazy_config(LAZY, [override, f"train.output_dir={tmp_path}"])
    with pytest.raises(error, match=message):
        check_run(LazyRun(cfg), eval_only=False)


def test_lazy_config_file_values_are_checked_too(monkeypatch):
    monkeypatch.setattr(runner, "check_datasets", lambda *a, **k: None)
    cfg = load_lazy_config(LAZY)
    cfg.train.max_iter = "abc"  # as a config file could set it
    with pytest.raises(TypeError, match=r"train.max_iter must be an integer, got 'abc' \(str\)"):
        check_run(LazyRun(cfg), eval_only=False)
    cfg.train.max_iter = 10
    check_run(LazyRun(cfg), eval_only=False)  # the shipped values pass


def test_batch_size_must_divide_over_the_gpus():
    from dimaskdino.utils.config_checks import check_lazy_config_values, check_yaml_config_values
    from dimaskdino.utils.config_files import load_yaml_config

    cfg = load_yaml_config(YAML, ["SOLVER.IMS_PER_BATCH", "8"])
    check_yaml_config_values(cfg, training=True, world_size=4)
    with pytest.raises(ValueError, match=r"SOLVER.IMS_PER_BATCH=8 .* divisible by the number of GPUs \(3\)"):
        check_yaml_config_values(cfg, training=True, world_size=3)
    with pytest.raises(ValueError, match=r"total_batch_size=8 must be divisible by the number of GPUs \(3\)"):
        check_lazy_config_values(load_lazy_config(LAZY, ["dataloader.train.total_batch_size=8"]), training=True,
                                 world_size=3)
