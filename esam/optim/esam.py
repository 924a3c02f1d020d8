"""ESAM (Du et al., ICLR 2022): SAM with Stochastic Weight Perturbation and Sharpness-sensitive Data Selection."""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import torch
import yaml

from .cost import SCORES, subset_size
from .methods import Knob, MethodInfo
from .plain import Closure
from .registry import OPTIMIZERS
from .sam import BN_UPDATE, RHO, SAM

# Keys of an exported `optimizer:` mapping that belong to the base optimizer or the trainer, not to ESAM.
BASE_KEYS = frozenset({"name", "lr", "momentum", "weight_decay", "nesterov", "dampening", "betas", "eps", "base"})
BETA = Knob("beta", 0.0, 1.0, open_low=True, paper=0.6)  # SWP's keep probability
GAMMA = Knob("gamma", 0.0, 1.0, open_low=True, paper=0.5)  # SDS's share of the batch
SCORE = Knob("score", choices=SCORES, paper="loss_rise")  # SDS's rule


def _other_methods_keys(cls: type) -> set[str]:
    """Settings that registered optimizers other than `cls` take: an exported config holds them all."""
    everyone = {k for factory in OPTIMIZERS.values() for k in getattr(factory, "hyperparameters", ())}
    return everyone - set(cls._config_keys())


class ESAM(SAM):
    """Efficient SAM: perturb a random subset of the tensors, descend on the sharpest samples.

    One step at weights w, batch of B samples, per-sample losses l_i:
        SWP   keep each parameter tensor with probability beta (a seeded CPU generator, one draw per
              tensor per step); the others have requires_grad off for the ascent pass only, so
              autograd skips their weight-gradient kernels (tensor granularity: element masks save nothing).
        g     = grad mean_i l_i(w) over the kept tensors; l_before = l_i(w)
        e     = rho * g / (beta * ||g||), so ||e|| = rho / beta and E[e] matches SAM's (ASAM: as in SAM, same 1/beta)
        SDS   score_i = l_i(w + e) - l_before_i (score="loss_rise", the paper: one more forward, no grad)
              or l_before_i (score="clean_loss": no extra forward, beyond the paper);
              keep the k = ceil(gamma * B) highest: topk, a static shape and no host sync
        g'    = grad mean_{i in top k} l_i(w + e); w is restored by copy; w <- base_optimizer(w, g')
    Cost relative to SGD: ((2 + f) B + [loss_rise] B + 3 k) / (3 B), f the realized kept fraction
    (1.7 at beta 0.6, gamma 0.5 with the paper's rule; see cost.py).

    Under DDP (model= the DistributedDataParallel module; SAM's docstring has the ascent and descent):
        SWP   the same tensors are frozen on every rank: the draw depends on nothing but the generator,
              so seed (or generator) is required with a DDP model and must be the same on every rank,
              and every rank must take the same number of steps (the frozen tensors get no ascent
              gradient, which a synced backward would wait for: another reason for no_sync)
        e_r   each rank's own, from its own batch (ascent under no_sync)
        SDS   per rank: the k_r = ceil(gamma * B_r) sharpest of the rank's own B_r samples
        g'    = mean_r grad mean_{i in top k_r} l_i(w + e_r), all-reduced by DDP's backward

    Degenerate case: beta = 1 and gamma = 1 is SAM exactly (no draw, no scoring, the same arithmetic:
    rho / (1.0 * ||g||)). If SWP keeps no tensor, e = 0 and the ascent pass is a forward only.

    Args (beyond SAM's): beta in (0, 1], gamma in (0, 1], score "loss_rise" | "clean_loss",
    seed or generator (a CPU torch.Generator) for SWP; with neither, the seed is torch.initial_seed().
    swp_patterns: None (the paper: a fresh draw every step) or N, a pool of N patterns drawn once
    (each tensor still kept with probability beta) from which every step picks one uniformly: a
    step then has at most N shapes, so CUDA graphs (esam.training.cuda_graphs) or torch.compile can capture each.
    The closure gets the selected indices as a LongTensor on the batch's device, sorted ascending;
    with a channels_last batch it should restore the format after indexing (see plain.py).
    Under torch.compile every new SWP pattern of requires_grad is a recompile.
    """

    method = "esam"
    hyperparameters = SAM.hyperparameters + ("beta", "gamma", "score", "swp_patterns")

    def __init__(self, params: Iterable, base_optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 beta: float = 0.6, gamma: float = 0.5, score: str = "loss_rise", adaptive: bool = False,
                 bn_update: str = "all", max_grad_norm: float | None = None, model: torch.nn.Module | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 swp_patterns: int | None = None) -> None:
        if not 0 < beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r} (valid: {', '.join(SCORES)})")
        if swp_patterns is not None and (isinstance(swp_patterns, bool) or not isinstance(swp_patterns, int)
                                         or swp_patterns < 1):
            raise ValueError(f"swp_patterns must be a positive integer or None, got {swp_patterns!r}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator (SWP draws on the host), got {generator.device}")
        if isinstance(model, torch.nn.parallel.DistributedDataParallel) and seed is None and generator is None:
            # torch.initial_seed() is often seeded per rank; a mask that differs between ranks breaks SWP's meaning.
            raise ValueError("ESAM under DDP needs seed=... (the same on every rank) so that every rank "
                             "draws the same SWP mask")
        super().__init__(params, base_optimizer, rho, adaptive, max_grad_norm, model, bn_update)
        self.defaults.update(beta=beta, gamma=gamma, score=score)
        self.beta, self.gamma, self.score = float(beta), float(gamma), score
        self._beta = self.beta
        if generator is None:
            generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else int(seed))
        self.generator = generator
        self.swp_patterns = swp_patterns
        # The pool of SWP patterns (True: kept), drawn once; None: a fresh draw every step.
        self._swp_pool = None if swp_patterns is None or self.beta >= 1 else \
            torch.rand(swp_patterns, len(self._params), generator=generator) < self.beta

    _float_keys: tuple[str, ...] = ("rho", "beta", "gamma", "max_grad_norm")  # read as numbers from YAML

    @classmethod
    def _config_keys(cls) -> tuple[str, ...]:
        return cls.hyperparameters + ("seed",)

    @classmethod
    def from_config(cls, params: Iterable, base_optimizer: torch.optim.Optimizer,
                    path_or_dict: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> ESAM:
        """ESAM from an exported config: a YAML file or dict with an `optimizer:` mapping (or the mapping itself).

        Base-optimizer keys (lr, momentum, weight_decay, nesterov, name, ...) and the settings of other
        registered methods (an exported config holds every optimizer field) are ignored; unknown keys
        raise ValueError. `overrides` (model=..., generator=...) are passed on as they are. Subclasses
        (LookSAM, RST, AESAM) load their own `optimizer.name` the same way.
        """
        if isinstance(path_or_dict, (str, os.PathLike)):
            with open(path_or_dict) as f:
                config = yaml.safe_load(f) or {}
        else:
            config = path_or_dict
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a mapping, got {type(config).__name__}")
        opt = config.get("optimizer", config)
        if not isinstance(opt, Mapping):
            raise ValueError(f"config's optimizer must be a mapping, got {opt!r}")
        if opt.get("name", cls.method) != cls.method:
            raise ValueError(f"config's optimizer.name is {opt['name']!r}, not {cls.method!r}")
        unknown = sorted(set(opt) - BASE_KEYS - _other_methods_keys(cls) - set(cls._config_keys()))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} config keys {unknown} (valid: {', '.join(cls._config_keys())}; "
                             f"ignored: {', '.join(sorted(BASE_KEYS))} and other methods' settings)")
        kwargs = {k: opt[k] for k in cls._config_keys() if k in opt}
        for k in cls._float_keys:  # YAML reads 5e-2 (no dot) as a string
            if isinstance(kwargs.get(k), str):
                try:
                    kwargs[k] = float(kwargs[k])
                except ValueError:
                    raise ValueError(f"optimizer.{k} must be a number, got {kwargs[k]!r}") from None
        return cls(params, base_optimizer, **{**kwargs, **overrides})

    # --- SWP and SDS: the two hooks of SAM.step ------------------------------------------------

    def _freeze(self) -> list[torch.Tensor]:
        if self.beta >= 1:
            return []
        # One vectorized draw per step; the generator lives on the CPU, so .tolist() never syncs a device.
        if self._swp_pool is None:
            keep = (torch.rand(len(self._params), generator=self.generator) < self.beta).tolist()
        else:
            pick = int(torch.randint(len(self._swp_pool), (1,), generator=self.generator))
            keep = self._swp_pool[pick].tolist()
        frozen = [p for p, k in zip(self._params, keep) if not k]
        for p in frozen:
            p.requires_grad_(False)
        return frozen

    def _select(self, closure: Closure, clean_losses: torch.Tensor) -> tuple[torch.Tensor | None, int, bool]:
        batch = clean_losses.shape[0]
        k = subset_size(self.gamma, batch)
        if k == batch:
            return None, batch, False
        if self.score == "loss_rise":  # how much each sample's loss rises at w + e
            with torch.no_grad():
                score = self._forward(closure, None, batch) - clean_losses
        else:
            score = clean_losses
        indices = torch.topk(score, k, sorted=False).indices.sort().values  # ascending: friendlier gathers
        return indices, k, self.score == "loss_rise"

    # --- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Base optimizer state, step counter, the SWP generator state and pattern pool."""
        return {**super().state_dict(), "generator": self.generator.get_state(), "swp_pool": self._swp_pool}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        super().load_state_dict(state_dict)
        if "generator" in state_dict:  # the CPU, wherever torch.load's map_location put it
            self.generator.set_state(state_dict["generator"].cpu())
        if state_dict.get("swp_pool") is not None:
            if self._swp_pool is None or state_dict["swp_pool"].shape != self._swp_pool.shape:
                raise ValueError(f"the state dict holds a pool of {len(state_dict['swp_pool'])} SWP patterns; "
                                 f"this ESAM has swp_patterns={self.swp_patterns} over {len(self._params)} tensors")
            self._swp_pool = state_dict["swp_pool"].cpu().clone()  # on the host: picking a pattern never syncs


ESAM_INFO = MethodInfo("esam", "ESAM", knobs=(RHO, BETA, GAMMA, SCORE, BN_UPDATE), sharpness="esam")
