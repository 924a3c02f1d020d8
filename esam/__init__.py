"""esam: find the best Efficient Sharpness-Aware Minimization settings at cluster scale.

`SAM` and `ESAM` are optimizers for any PyTorch loop; `train` runs one training; the `esam`
command runs searches (Ray Tune + Optuna), records them (MLflow) and exports the best configs.
"""
__version__ = "0.1.0"
__all__ = ["ESAM", "SAM", "Plain", "train", "__version__"]

# Every public name is imported on first use: `import esam.cli` (behind `esam --help`) must not pay
# for torch, which the optimizers and train() need.
_OPTIMIZERS = ("ESAM", "SAM", "Plain")


def __getattr__(name: str):
    if name in _OPTIMIZERS:
        import esam.optim
        return getattr(esam.optim, name)
    if name == "train":  # imported lazily: the optimizers need no models or data
        from esam.training.trainer import train
        return train
    raise AttributeError(f"module 'esam' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
