"""torch.compile for the training passes, with room for ESAM's SWP patterns.

Dynamo guards on each parameter's requires_grad, so every SWP pattern of ESAM's ascent pass is a
graph of its own. With a fresh pattern each step, that is a recompile per step: train() then keeps
the ascent pass eager. With a pool of N patterns (`swp_patterns`), N + 3 graphs cover a run (the N
ascents, scoring, descent, evaluation) once dynamo's recompile limit allows that many.
"""
from __future__ import annotations

import torch
from torch import nn

from esam.config import COMPILE_MODES


def compile_model(model: nn.Module, mode: str = "default", swp_patterns: int | None = None) -> nn.Module:
    """torch.compile(model, mode); raises dynamo's recompile limit to fit N SWP patterns."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r} (valid: {', '.join(COMPILE_MODES)})")
    if swp_patterns:
        import torch._dynamo.config as dynamo_config
        needed = swp_patterns + 4  # ascents, scoring, descent, evaluation, and one to spare
        # recompile_limit in torch >= 2.6, cache_size_limit before
        name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), needed))
    return torch.compile(model, mode=None if mode == "default" else mode)
