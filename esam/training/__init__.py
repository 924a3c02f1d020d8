"""The training core: `train()` and what it runs on. Knows nothing of Ray, Optuna or MLflow."""
