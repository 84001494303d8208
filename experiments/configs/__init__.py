"""ml_collections config files of the experiments: `--config=experiments/configs/<name>.py`."""
