"""AdamW of the authors' configs: lr 1e-4, weight decay 0.05 (none on norms), backbone lr x0.1,
gradient norm of the whole model clipped to 0.01. The yaml path's optimizer, from plain arguments."""
from detectron2.config import LazyCall as L

from dimaskdino.engine.optimizer import build_optimizer

optimizer = L(build_optimizer)(
    model=None,  # filled in by the runner
    optimizer="ADAMW",
    base_lr=1e-4,
    weight_decay=0.05,
    backbone_multiplier=0.1,
    weight_decay_norm=0.0,
    weight_decay_embed=0.0,
    clip_gradients=dict(clip_type="full_model", clip_value=0.01, norm_type=2.0),
)
