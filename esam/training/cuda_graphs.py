"""CUDA graphs for the training passes: one replay instead of hundreds of kernel launches.

At CIFAR batch sizes an H100/H200 training step is bound by the host launching kernels, not by
the GPU running them (experiments/RESULTS.md, section 4): ESAM's extra scoring forward costs a
third of a pass in launches even though it saves arithmetic. `GraphedPasses(model)` is called
like the model. In training mode, each distinct pass is captured in a CUDA graph the second time
it is seen and replayed from then on. A pass is told apart by: gradients on or off, the input's
shape, dtype and strides, the autocast state, and which parameters require a gradient (ESAM's SWP).
Everything else runs eagerly: evaluation (eval mode), a pass seen only once (ESAM's SWP draws a
fresh pattern every step unless `swp_patterns` makes it reuse a pool of them) and any pass beyond
`max_graphs`.

What makes a replay safe, and what the training loop must therefore respect:
- A replayed pass's outputs (and the gradients it leaves in `.grad`) live in graph memory that the
  next replay of the same graph overwrites: consume them (loss, optimizer step) before that.
- All graphs share one memory pool, so a pass's backward must run before another graph's forward:
  true of Plain, SAM and ESAM, whose passes run forward, backward, then the next pass.
- Parameters and buffers are updated in place and never replaced (no model.to() after capture).
- Autocast runs with cache_enabled=False: the weight-cast cache cannot be captured (refused).
- Captures use the "thread_local" capture mode where torch offers it (torch.cuda.graph always;
  make_graphed_callables in recent releases), so a DataLoader's pin-memory thread making CUDA
  calls does not invalidate them; with an older torch, prefer GPU-resident datasets (CIFAR, digits).
Capturing runs the pass a few extra times on the same batch; the BatchNorm running statistics
(all buffers) are saved before and restored after, so capture leaves no trace in the model.
"""
from __future__ import annotations

import inspect
from typing import Callable, Hashable

import torch
from torch import nn

Pass = Callable[[torch.Tensor], torch.Tensor]
Capture = Callable[[nn.Module, torch.Tensor, object], Pass]
_SEEN_LIMIT = 4096  # keys seen once are forgotten beyond this (fresh SWP patterns never repeat)
_THREAD_LOCAL = {"capture_error_mode": "thread_local"}
_GRAPHED_CALLABLE_KWARGS = _THREAD_LOCAL if "capture_error_mode" in inspect.signature(
    torch.cuda.make_graphed_callables).parameters else {}


class _Forward(nn.Module):
    """A separate module per graph: make_graphed_callables replaces its forward, not the model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def capture_cuda_graph(model: nn.Module, x: torch.Tensor, pool: object) -> Pass:
    """Capture model(x) as it would run now (grad mode, autocast, requires_grad pattern) into `pool`."""
    if not x.is_cuda:
        raise ValueError(f"CUDA graphs need a CUDA input, got one on {x.device}")
    if torch.is_autocast_enabled("cuda") and torch.is_autocast_cache_enabled():
        raise ValueError("CUDA graphs need torch.autocast(..., cache_enabled=False): the cast cache would "
                         "hold weight copies that the graph cannot refresh")
    static_x = x.detach().clone()  # clone keeps the strides (channels_last)
    if torch.is_grad_enabled():  # forward and backward, as an autograd function
        return torch.cuda.make_graphed_callables(_Forward(model), (static_x,), pool=pool, **_GRAPHED_CALLABLE_KWARGS)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the capture: cudnn autotuning, lazy init
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream, **_THREAD_LOCAL):
        static_out = model(static_x)

    def replay(inp: torch.Tensor) -> torch.Tensor:
        static_x.copy_(inp)
        graph.replay()
        return static_out
    return replay


class GraphedPasses(nn.Module):
    """Route each call of `model` to a captured CUDA graph of that pass, or run it eagerly."""

    def __init__(self, model: nn.Module, max_graphs: int = 16, capture: Capture = capture_cuda_graph):
        super().__init__()
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.model, self.max_graphs, self._capture = model, max_graphs, capture
        self._params = list(model.parameters())
        self._graphs: dict[Hashable, Pass] = {}  # a plain dict: .eval() must not reach the graphs
        self._seen: set[Hashable] = set()
        self._pool: object = None  # one memory pool for all graphs, made at the first CUDA capture
        self.replays = 0  # how many calls were served by a graph (benchmarks report it)

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def _key(self, x: torch.Tensor) -> Hashable:
        grad = torch.is_grad_enabled()
        pattern = tuple(p.requires_grad for p in self._params) if grad else None
        autocast = (torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))
        return grad, tuple(x.shape), x.stride(), x.dtype, x.device, autocast, pattern

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.model.training or x.requires_grad:  # a replay would drop the input's gradient
            return self.model(x)
        key = self._key(x)
        graph = self._graphs.get(key)
        if graph is None:
            if key not in self._seen or len(self._graphs) >= self.max_graphs:
                if len(self._seen) >= _SEEN_LIMIT:
                    self._seen.clear()
                self._seen.add(key)
                return self.model(x)
            graph = self._graphs[key] = self._captured(x)
        self.replays += 1
        return graph(x)

    def _captured(self, x: torch.Tensor) -> Pass:
        buffers = list(self.model.buffers())
        saved = [b.clone() for b in buffers]
        if self._pool is None and x.is_cuda:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            return self._capture(self.model, x, self._pool)
        finally:
            with torch.no_grad():
                for b, s in zip(buffers, saved):
                    b.copy_(s)


def warm_up(step: Callable[[], object], graphed: list[GraphedPasses], quiet_steps: int, max_steps: int = 1000) -> int:
    """Call step() until none of `graphed` has captured a new pass for `quiet_steps` calls in a row.

    A pass is captured at its second sighting, ESAM's pool patterns whenever they first repeat:
    benchmarks run this untimed so that captures stay out of what they time. Returns the calls made.
    """
    quiet = calls = 0
    while quiet < quiet_steps and calls < max_steps:
        before = sum(g.num_graphs for g in graphed)
        step()
        calls += 1
        quiet = quiet + 1 if sum(g.num_graphs for g in graphed) == before else 0
    return calls


def warm_up_quiet_steps(swp_patterns: int | None) -> int:
    """Capture-free steps after which warm_up stops: a pool pattern unseen for 4N steps is unlikely."""
    return 10 + 4 * (swp_patterns or 0)


def graph_budget(swp_patterns: int | None) -> int:
    """Graphs a run may need: ESAM's ascent patterns, scoring, descent, and room to spare."""
    return max(16, (swp_patterns or 0) + 4)
