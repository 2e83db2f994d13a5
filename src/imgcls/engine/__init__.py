"""Training engine: plain loop functions, optimizers, schedules, losses, EMA, checkpoints, distributed helpers."""
