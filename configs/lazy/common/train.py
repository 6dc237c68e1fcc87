"""Run settings shared by the LazyConfig experiments (read by dimaskdino.engine.runner)."""
train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=88500,
    amp=dict(enabled=True),
    model_ema=dict(enabled=False, decay=0.999),  # exponential moving average of the weights
    # training batches of the iterations before until_iter resized by scale (off: until_iter=0)
    progressive_resize=dict(scale=1.0, until_iter=0),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=5000,
    log_period=20,
    device="cuda",
    seed=-1,
)
