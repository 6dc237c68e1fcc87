"""Runs train_net.py's main while recording what the resume test needs (not a test module).

    python tests/train_net_recorder.py <train_net.py arguments>

Environment:
    RECORD_BATCHES: file that gets one json line per iteration: {"iter": i, "ids": [image ids]}
    RESUMED_STATE: file that gets the trainer state right after a resume (iteration, hook states
        such as the LR scheduler's, optimizer and AMP grad scaler), in torch.save format
    KILL_AT_ITER: SIGKILL this process when the batch of that iteration is requested
"""
import json
import os
import signal
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import train_net  # noqa: E402
from dimaskdino.engine import DIMaskDINOTrainer  # noqa: E402


class RecordingIterator:
    """Wraps the training loop's data iterator: logs each batch's image ids, kills on request."""

    def __init__(self, iterator, trainer):
        self.iterator = iterator
        self.trainer = trainer
        self.kill_at = int(os.environ.get("KILL_AT_ITER", -1))

    def __iter__(self):
        return self

    def __next__(self):
        if self.trainer.iter == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        batch = next(self.iterator)
        with open(os.environ["RECORD_BATCHES"], "a") as f:
            f.write(json.dumps({"iter": self.trainer.iter, "ids": [d["image_id"] for d in batch]}) + "\n")
        return batch


def _resume_or_load(self, resume=True):
    original_resume_or_load(self, resume=resume)
    if self.start_iter > 0 and os.environ.get("RESUMED_STATE"):
        torch.save(self.state_dict(), os.environ["RESUMED_STATE"])
    self._trainer._data_loader_iter = RecordingIterator(self._trainer._data_loader_iter, self)


original_resume_or_load = DIMaskDINOTrainer.resume_or_load
DIMaskDINOTrainer.resume_or_load = _resume_or_load

if __name__ == "__main__":
    train_net.main(train_net.distributed_argument_parser().parse_args(sys.argv[1:]))
