"""Config-driven training: config, data, loop, checkpoints."""
