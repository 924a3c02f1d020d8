"""esam: find the best Efficient Sharpness-Aware Minimization settings at cluster scale.

`SAM` and `ESAM` are optimizers for any PyTorch loop; `train` runs one training; the `esam`
command runs searches (Ray Tune + Optuna), records them (MLflow) and exports the best configs.
"""
from esam.optim import ESAM, SAM, Plain

__version__ = "0.1.0"
__all__ = ["ESAM", "SAM", "Plain", "train", "__version__"]


def __getattr__(name: str):
    if name == "train":  # imported lazily: the optimizers need no models or data
        from esam.training.trainer import train
        return train
    raise AttributeError(f"module 'esam' has no attribute {name!r}")
