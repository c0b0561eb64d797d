"""The run: rules, assembly, the training loop, evaluation, checkpoints, logs, sweeps and the CLI."""
