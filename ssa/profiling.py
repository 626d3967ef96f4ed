"""Stage timings and peak memory of :class:`~ssa.SSAPipeline` calls (used by ``benchmarks/pipeline.py``).

    timer = StageTimer(pipe)          # hooks the model's modules, sets pipe.timer
    with timer:                       # recording on; hooks removed on exit
        pipe("video.mp4", "the cat")
    timer.stages()                    # {"decode": s, "preprocess": s, "clip_visual": s, ...}

:class:`StageFlops` counts floating-point operations per stage the same way (``stages()`` then gives
FLOPs), to compare a stage's cost with the CLIP pass independently of how fast a machine runs it.

The pipeline reports the stages it runs itself (decoding and preprocessing on its background thread,
the sequence stages, mask upsampling and selection); forward hooks time the model's modules. On CUDA
every boundary synchronises the device, so the figures are stage costs, slightly above what an
unobserved call takes.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["StageTimer", "StageFlops", "PeakMemory", "MethodShadows", "STAGES", "current_rss"]

STAGES = (
    "decode",
    "preprocess",
    "clip_visual",
    "text",
    "adapters",
    "pixel_decoder",
    "frame_decoder",
    "trajectories+temporal+ensemble",
    "video_decoder",
    "masks",
    "writing",
)
"""Stage names in data-flow order, as :meth:`StageTimer.stages` reports them."""


class MethodShadows:
    """Measure every call of methods that do not run as one module call (forward hooks cannot see them):
    :meth:`around` shadows ``owner.method`` by an instance attribute that runs ``before()`` and
    ``after(token)`` around each call; :meth:`restore` removes every shadow."""

    def __init__(self) -> None:
        self._shadowed: list[tuple[Any, str]] = []

    def around(self, owner: Any, method: str, before: Callable[[], Any],
               after: Callable[[Any], None]) -> None:
        inner = getattr(owner, method)

        def measured(*args: Any, **kwargs: Any) -> Any:
            token = before()
            try:
                return inner(*args, **kwargs)
            finally:
                after(token)

        setattr(owner, method, measured)
        self._shadowed.append((owner, method))

    def restore(self) -> None:
        for owner, method in self._shadowed:
            delattr(owner, method)
        self._shadowed.clear()


class StageTimer:
    """Accumulates wall time per stage of the pipeline ``pipe`` while entered."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.totals: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._cuda = pipe.device.type == "cuda"
        self._handles: list[Any] = []
        self._shadows = MethodShadows()  # entry points timed while entered
        self._starts: dict[int, float] = {}

    # -- recording ------------------------------------------------------------------------------------
    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize(self.pipe.device)
        return time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name`` (thread-safe: the decoding thread reports here too)."""
        self._record(name, seconds)

    def _record(self, name: str, amount: float) -> None:
        with self._lock:
            self.totals[name] += amount

    @contextlib.contextmanager
    def section(self, name: str, *, sync: bool = True) -> Iterator[None]:
        """Time the enclosed block as stage ``name`` (``sync=False`` off the compute stream)."""
        start = self._now() if sync else time.perf_counter()
        try:
            yield
        finally:
            self._record(name, (self._now() if sync else time.perf_counter()) - start)

    def _hook(self, name: str, first: nn.Module, last: nn.Module | None = None) -> None:
        """Time from the start of ``first``'s forward to the end of ``last``'s (default: ``first``)."""
        key = id(first)

        def pre(*_: Any) -> None:
            self._starts[key] = self._now()

        def post(*_: Any) -> None:
            start = self._starts.pop(key, None)
            if start is not None:
                self._record(name, self._now() - start)

        self._handles.append(first.register_forward_pre_hook(pre))
        self._handles.append((last or first).register_forward_hook(post))

    def _wrap(self, name: str, owner: Any, method: str) -> None:
        """Time every call of ``owner.method`` (shadowed until exit): for entry points that do not run as
        one module call, e.g. the CLIP stages, which on a CPU may run their blocks in token chunks
        rather than through the stage module."""
        self._shadows.around(owner, method, self._now, lambda start: self._record(name, self._now() - start))

    def __enter__(self) -> StageTimer:
        model = self.pipe.model
        self._wrap("clip_visual", model.backbone, "encode_stem")  # stem + stage 0
        self._wrap("clip_visual", model.backbone, "run_stage")  # stages 1-3, between the adapters
        self._hook("text", model.backbone.clip.transformer)
        for adapter in model.adapters or []:
            self._hook("adapters", adapter)
        self._hook("pixel_decoder", model.pixel_decoder)
        self._hook("frame_decoder", model.frame_decoder)
        self._hook("video_decoder", model.video_decoder)
        self.pipe.timer = self
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._shadows.restore()
        self.pipe.timer = None

    # -- report ---------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.totals.clear()

    def stages(self) -> dict[str, float]:
        """Seconds per stage in :data:`STAGES` order. The pipeline times the whole sequence step; the
        video decoder's share is reported on its own and the rest is trajectories + temporal
        enhancement + ensemble."""
        t = dict(self.totals)
        sequence = t.pop("sequence", 0.0)
        t["trajectories+temporal+ensemble"] = max(0.0, sequence - t.get("video_decoder", 0.0))
        return {name: t.get(name, 0.0) for name in STAGES}


class StageFlops(StageTimer):
    """Floating-point operations per stage of the pipeline ``pipe`` while entered (``stages()`` gives
    FLOPs, 2 per multiply-add).

    Counted as ``torch.utils.flop_counter`` counts them, matrix products and convolutions, plus the
    deformable sampling: the CPU path's sparse product (a weighted gather-sum, ``embedding_bag``) by its
    nonzeros (2 · nnz · channels, where the dense count of the same matrix would be ~1000x too high) and
    ``grid_sample``'s 4 bilinear taps per output value, the same count. Elementwise work (norms,
    activations, softmax) is not counted. Stages the pipeline reports in seconds from its decoding
    thread (decode, preprocess) are left out.
    """

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe)
        self._cuda = False  # counting needs no device synchronisation
        self._counter = _FlopCount()

    def _now(self) -> float:
        return float(self._counter.total)

    def section(self, name: str, *, sync: bool = True) -> contextlib.AbstractContextManager[None]:
        if not sync:  # a wall-time section off the compute stream (writing): no FLOPs of ours
            return contextlib.nullcontext()
        return super().section(name)

    def add(self, name: str, seconds: float) -> None:
        """Wall-time reports of the pipeline's own stages are not FLOPs: ignored."""

    def __enter__(self) -> StageFlops:
        super().__enter__()
        self._counter.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._counter.__exit__(*exc)
        super().__exit__(*exc)


def _mm_flops(a: torch.Tensor, b: torch.Tensor, *_: Any, out_val: Any = None, **__: Any) -> int:
    """aten.mm: 2·M·K·N, or 2·nnz·N for a sparse left operand."""
    if a.layout != torch.strided:
        return 2 * int(a._nnz()) * int(b.shape[1])
    return 2 * int(a.shape[0]) * int(a.shape[1]) * int(b.shape[1])


def _embedding_bag_flops(weight: torch.Tensor, indices: torch.Tensor, *_: Any, out_val: Any = None,
                         **__: Any) -> int:
    """aten._embedding_bag (a weighted gather-sum, the CPU deformable sampling's sparse product): one
    multiply-add per index and channel."""
    return 2 * int(indices.numel()) * int(weight.shape[1])


def _grid_sample_flops(*_: Any, out_val: torch.Tensor | None = None, **__: Any) -> int:
    """aten.grid_sampler_2d (bilinear): 4 multiply-adds per output value."""
    return 0 if out_val is None else 8 * out_val.numel()


class _FlopCount(TorchDispatchMode):
    """Sums the FLOPs of the ops dispatched while entered (this thread only), with
    ``torch.utils.flop_counter``'s formulas and the two above. (``FlopCounterMode`` itself tracks
    modules through autograd hooks, which fail on parameters passed as inputs under ``no_grad``.)"""

    def __init__(self) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry  # formulas taking (*args, out_val=)

        aten = torch.ops.aten
        self.formulas = dict(flop_registry)
        self.formulas.update({aten.mm: _mm_flops, aten.grid_sampler_2d: _grid_sample_flops,
                              aten._embedding_bag: _embedding_bag_flops,
                              aten._embedding_bag_forward_only: _embedding_bag_flops,
                              aten.addmm_: flop_registry[aten.addmm]})  # in place: the same product
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory while entered: RSS sampled every ``interval`` s on a thread (CPU), or
    ``torch.cuda.max_memory_allocated`` on ``device`` (CUDA). ``samples`` keeps (seconds, RSS) pairs."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.01) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            rss = current_rss()
            self.peak = max(self.peak, rss)
            self.samples.append((time.perf_counter() - start, rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self.peak, current_rss())
