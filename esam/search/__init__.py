"""The search: Ray Tune runs trials, Optuna proposes settings, MLflow records them."""
