"""Checkpoints of a training run: written atomically, read without running code.

A checkpoint holds the model, the optimizer (with its base optimizer's state and ESAM's SWP
generator), the scheduler, the RNG states and the epoch: tensors and plain containers only, so
`torch.load(weights_only=True)` reads it. Shared storage (results_dir on a cluster) lets others
replace checkpoints; a full unpickler would run whatever a crafted file asks for.
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch

from esam.errors import DataError, first_line

CHECKPOINT_FILE = "checkpoint.pt"
_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "rng_cpu", "epoch")


def save_checkpoint(directory: Path, state: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, directory / CHECKPOINT_FILE)  # atomic: a crash never leaves half a checkpoint


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state dict, read without running code; a refused, cut or corrupt file is a DataError."""
    path = Path(path)
    try:
        # On the CPU first: RNG and SWP generator states must stay there; load_state_dict moves the rest.
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"checkpoint {path} is not a plain esam checkpoint "
                        "(refused: loading it would run code)") from None
    except Exception as err:  # noqa: BLE001 - zip, EOF, magic-number and key errors of a cut or corrupt file
        raise DataError(f"checkpoint {path} is truncated or corrupt ({first_line(err, 160)})") from None
    if not isinstance(state, dict) or any(k not in state for k in _CHECKPOINT_KEYS):
        raise DataError(f"checkpoint {path} is not an esam checkpoint (expected keys {', '.join(_CHECKPOINT_KEYS)})")
    return state



def restore(state: dict, path: Path, model, optimizer, scheduler, device: torch.device) -> int:
    """Load a checkpoint's states into the run; returns the first epoch still to train."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        return int(state["epoch"]) + 1
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        # A checkpoint of another model or optimizer: torch's multi-line report becomes one line.
        raise DataError(f"checkpoint {path} does not fit this config: {first_line(err, 160)}") from None
