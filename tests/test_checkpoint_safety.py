"""Crash-safe checkpoints: interrupted saves leave the previous files intact, resume falls back to
the newest intact checkpoint, and unreadable weights files give errors naming the file."""
import argparse
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from dimaskdino.checkpoint import DIMaskDINOCheckpointer, UnreadableCheckpointError
from dimaskdino.utils.weights import load_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(value: float) -> nn.Module:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)
    return model


def _saved_weight(path) -> float:
    return float(torch.load(path, weights_only=True)["model"]["weight"][0, 0])


def _last(folder) -> str:
    with open(os.path.join(folder, "last_checkpoint")) as f:
        return f.read()


def _files(folder):
    return sorted(os.listdir(folder))


class _Interrupted(Exception):
    pass


def test_save_interrupted_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = str(tmp_path)
    DIMaskDINOCheckpointer(_model(1.0), folder).save("model_final", iteration=59)
    before = (tmp_path / "model_final.pth").read_bytes()

    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)  # a partial file, then the "crash"
        raise _Interrupted()

    monkeypatch.setattr(torch, "save", save_then_fail)
    checkpointer = DIMaskDINOCheckpointer(_model(2.0), folder)
    for name in ("model_final", "model_0000069"):  # rewriting a file, writing a new one
        with pytest.raises(_Interrupted):
            checkpointer.save(name, iteration=69)
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert _last(folder) == "model_final.pth"
    assert _files(folder) == ["last_checkpoint", "model_final.pth"]  # no partial file, no temp file


def test_save_killed_mid_write_leaves_old_files_and_only_a_hidden_temporary(tmp_path):
    folder = str(tmp_path)
    DIMaskDINOCheckpointer(_model(1.0), folder).save("model_0000039", iteration=39)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from torch import nn
        from dimaskdino.checkpoint import DIMaskDINOCheckpointer
        real_save = torch.save
        def save_and_die(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # before the rename
        torch.save = save_and_die
        DIMaskDINOCheckpointer(nn.Linear(3, 2), {folder!r}).save("model_0000079", iteration=79)
    """)
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    names = _files(folder)
    assert "model_0000079.pth" not in names and _last(folder) == "model_0000039.pth"
    temporaries = [n for n in names if n.startswith(".model_0000079.pth.") and n.endswith(".tmp")]
    assert len(temporaries) == 1, names
    # the next save removes the leftover
    DIMaskDINOCheckpointer(_model(3.0), folder).save("model_0000079", iteration=79)
    assert _files(folder) == ["last_checkpoint", "model_0000039.pth", "model_0000079.pth"]
    assert _saved_weight(tmp_path / "model_0000079.pth") == 3.0


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    folder = str(tmp_path)
    writer = DIMaskDINOCheckpointer(_model(1.0), folder)
    writer.save("model_0000019", iteration=19)
    writer.model.weight.data.fill_(2.0)
    writer.save("model_0000039", iteration=39)
    os.utime(tmp_path / "model_0000019.pth", (1, 1))  # make the order by time unambiguous
    final = tmp_path / "model_final.pth"
    intact = (tmp_path / "model_0000039.pth").read_bytes()
    final.write_bytes(intact[: len(intact) // 2])  # truncated by a crash
    (tmp_path / "last_checkpoint").write_text("model_final.pth")

    reader = DIMaskDINOCheckpointer(_model(0.0), folder)
    records = _Records()
    reader.logger.addHandler(records)
    try:
        extra = reader.resume_or_load("", resume=True)
    finally:
        reader.logger.removeHandler(records)
    assert extra["iteration"] == 39
    assert float(reader.model.weight.detach()[0, 0]) == 2.0
    warning = " ".join(records.messages)
    assert str(final) in warning and os.path.join(folder, "model_0000039.pth") in warning
    assert "truncated" in warning


def test_resume_with_no_intact_checkpoint_names_every_file(tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(UnreadableCheckpointError, match=r"no checkpoint in it is readable.*model_final.pth.*empty"):
        DIMaskDINOCheckpointer(_model(0.0), str(tmp_path)).resume_or_load("", resume=True)


def _bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"model": _model(1.0).state_dict()}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "text":
        path.write_text("this is a README, not weights\n")
    else:  # an object the weights-only loader refuses
        torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, path)
    return str(path)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "is empty"),
        ("truncated", "is truncated or not a PyTorch checkpoint"),
        ("text", "not a PyTorch checkpoint"),
        ("pickled_object", "argparse.Namespace object, which the safe weights-only loader refuses"),
    ],
)
def test_unreadable_weights_files_are_named_without_unsafe_advice(tmp_path, kind, message):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(ValueError) as error:
        load_weights(_model(0.0), path)
    assert path in str(error.value) and message in str(error.value)
    chained, seen = error.value, []
    while chained is not None:  # no message a traceback shows may suggest weights_only=False
        seen.append(str(chained))
        chained = chained.__cause__ or (None if chained.__suppress_context__ else chained.__context__)
    assert not any("weights_only" in m for m in seen), seen


def test_eval_only_resume_falls_back_too(tmp_path):
    DIMaskDINOCheckpointer(_model(4.0), str(tmp_path)).save("model_0000009", iteration=9)
    (tmp_path / "model_final.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    model = _model(0.0)
    load_weights(model, "", save_dir=str(tmp_path), resume=True)
    assert float(model.weight.detach()[0, 0]) == 4.0
