"""The exponential moving average of the weights (dimaskdino.engine.ema), checked against the
average computed by hand from the weights recorded after each step."""
import os

import pytest
import torch
from torch import nn

from dimaskdino.engine.ema import WeightAverage
from test_trainer import _TrainerTestModel, _trainer_cfg


def _reference_average(history, decay):
    """The average of the recorded state dicts, updated as the docstring of the module says,
    in float64."""
    average = {k: v.double().clone() for k, v in history[0].items()}
    for n, weights in enumerate(history[1:], start=1):
        d = min(decay, (1.0 + n) / (10.0 + n))
        for key, value in weights.items():
            average[key] = d * average[key] + (1 - d) * value.double() if value.is_floating_point() else value.clone()
    return average


def test_average_of_parameters_and_batchnorm_statistics_matches_the_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    history = [{k: v.clone() for k, v in model.state_dict().items()}]
    average = WeightAverage(model, decay=0.9)
    for _ in range(25):  # past the ramp: (1 + n) / (10 + n) reaches 0.9 at n = 80, so the ramp rules
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(5, 3))  # moves the BatchNorm statistics and num_batches_tracked
        average.update(model)
        history.append({k: v.clone() for k, v in model.state_dict().items()})
    expected = _reference_average(history, 0.9)
    for key, value in average.average.items():
        if value.is_floating_point():
            torch.testing.assert_close(value.double(), expected[key], rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(value, expected[key]), key
    assert int(average.average["1.num_batches_tracked"]) == 25
    assert not torch.allclose(average.average["0.weight"], model[0].weight)


def test_decay_reaches_its_value_after_the_ramp():
    average = WeightAverage(nn.Linear(1, 1), decay=0.5)
    assert average.current_decay() == pytest.approx(2 / 11)
    average.updates = 100
    assert average.current_decay() == 0.5


def test_swapped_into_restores_the_own_weights_even_on_error():
    model = nn.Linear(2, 2)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    average = WeightAverage(model, decay=0.5)
    average.average["weight"].fill_(7.0)
    with pytest.raises(RuntimeError):
        with average.swapped_into(model):
            assert torch.all(model.weight == 7.0)
            raise RuntimeError("evaluation failed")
    assert torch.equal(model.weight, own["weight"])


def test_bad_decay_is_an_error():
    with pytest.raises(ValueError, match=r"MODEL_EMA.DECAY must be in \[0, 1\), got 1.5"):
        WeightAverage(nn.Linear(1, 1), decay=1.5)


def _record_weights(trainer, history):
    from detectron2.engine import HookBase

    class Recorder(HookBase):
        def before_train(self):
            history.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

        def after_step(self):  # registered first, so it sees the weights before the EMA hook runs
            history.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    trainer._hooks.insert(0, Recorder())
    trainer._hooks[0].trainer = trainer


def _ema_cfg(tmp_path, max_iter):
    """The trainer test's config with the average on; the seeds reset (same initial weights and
    data order for every trainer built next)."""
    from detectron2.config import CfgNode
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(0)
    tmp_path.mkdir(exist_ok=True)
    cfg = _trainer_cfg(tmp_path, max_iter=max_iter)
    cfg.MODEL_EMA = CfgNode({"ENABLED": True, "DECAY": 0.6})
    cfg.SOLVER.BASE_LR = 0.05  # steps large enough for the average to differ clearly from the weights
    # no random augmentation: its random state restarts on --resume (dimaskdino.data.resume)
    cfg.INPUT.MIN_SCALE = cfg.INPUT.MAX_SCALE = 1.0
    cfg.INPUT.RANDOM_FLIP = "none"
    return cfg


def test_trainer_ends_with_the_average_and_resumes_from_the_raw_weights(tmp_path):
    from dimaskdino.engine import DIMaskDINOTrainer

    _TrainerTestModel.NAN_AT = -1
    # uninterrupted: 6 iterations
    history = []
    trainer = DIMaskDINOTrainer(_ema_cfg(tmp_path / "a", max_iter=6))
    _record_weights(trainer, history)
    trainer.resume_or_load(resume=False)
    trainer.train()
    expected = _reference_average(history, 0.6)
    final = torch.load(os.path.join(trainer.cfg.OUTPUT_DIR, "model_final.pth"), weights_only=False)["model"]
    for key, value in final.items():
        if value.is_floating_point():
            torch.testing.assert_close(value.double(), expected[key], rtol=1e-5, atol=1e-6, msg=key)
            assert (value - history[-1][key]).abs().max() > 1e-4, key  # not the raw weights
    # 3 iterations, then --resume with 6: the same final average, and the raw weights continued
    short = DIMaskDINOTrainer(_ema_cfg(tmp_path / "b", max_iter=3))
    short.resume_or_load(resume=False)
    short.train()
    resumed = DIMaskDINOTrainer(_ema_cfg(tmp_path / "b", max_iter=6))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, history[3][key]), key
    resumed.train()
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, final[key], msg=key)


def test_lazy_runs_place_the_average_before_checkpointing_and_evaluate_it(tmp_path, monkeypatch):
    """train.model_ema.enabled in a LazyConfig: the EMA hook runs before the checkpointer (so that
    the final checkpoint holds the average) and the evaluation hook evaluates the average."""
    from detectron2.engine import hooks

    import dimaskdino.engine.runner as runner
    from dimaskdino.checkpoint import DIMaskDINOCheckpointer
    from dimaskdino.engine.ema import EMAHook
    from dimaskdino.engine.runner import load_run
    from test_runner import LAZY

    run = load_run(LAZY, [f"train.output_dir={tmp_path}", "train.device=cpu", "train.model_ema.enabled=True",
                          "train.model_ema.decay=0.9"])
    model = nn.Linear(2, 2)
    checkpointer = DIMaskDINOCheckpointer(model, str(tmp_path))
    hook_list = run._hooks(checkpointer, model)
    kinds = [type(h) for h in hook_list]
    ema = hook_list[kinds.index(EMAHook)]
    assert ema.average.decay == 0.9
    assert kinds.index(EMAHook) < kinds.index(hooks.PeriodicCheckpointer) < kinds.index(hooks.EvalHook)
    evaluated = []
    evaluation = hook_list[kinds.index(hooks.EvalHook)]
    ema.average.average["weight"].fill_(3.0)
    monkeypatch.setattr(runner, "evaluate", lambda run_, model_: evaluated.append(model_.weight.detach().clone()))
    evaluation._do_eval()
    assert evaluated and torch.all(evaluated[0] == 3.0) and not torch.all(model.weight == 3.0)
    off = load_run(LAZY, [f"train.output_dir={tmp_path}", "train.device=cpu"])
    assert EMAHook not in [type(h) for h in off._hooks(checkpointer, model)]
