"""The LV-MAE training step over fixed-shape packed batches: eager on CPU, compiled and
captured once per capacity on CUDA, then replayed.

:class:`PackedStep` runs forward and backward of :func:`lvmae.mae.packing.packed_loss` for one
micro-batch and adds its gradient into the model's ``.grad`` tensors, which are views of one
flat buffer (:attr:`PackedStep.flat_grad`), so data parallelism is one all-reduce of that
buffer per optimizer step (:meth:`PackedStep.all_reduce_grads`) and gradient accumulation is
free. The optimizer step (fused AdamW on CUDA), the lr schedule and gradient clipping run
eagerly after it: none of them reads a device value on the host either.

On CUDA with ``graphs=True`` each capacity (:class:`lvmae.mae.packing.Capacity`, a few buckets
per run) gets static input buffers, a few warm-up steps on a side stream (where
``torch.compile`` of the transformer blocks happens, once per shape) and one
``torch.cuda.CUDAGraph`` capture of forward + backward; every later batch of that capacity is
copied into the buffers and the graph replayed, thousands of kernels for one launch. The
captured backward accumulates into the pre-allocated gradient buffer (it exists before the
capture), so several micro-batches, of any buckets, add up before one optimizer step.

Sources: PyTorch's CUDA-graph notes (whole-network capture, warm-up on a side stream, shared
memory pools); torchtitan's per-block compilation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from lvmae.mae.packing import Capacity, PackedWindows, needed_capacity, packed_loss

__all__ = ["PackedStep", "StepStats", "attach_flat_grads", "compile_counters"]

WARMUP_STEPS = 3  # eager steps per capacity before its capture (compile, allocator, cuBLAS)


def attach_flat_grads(model: nn.Module) -> Tensor:
    """Give every trainable parameter of ``model`` a zero ``.grad`` that is a view of one flat
    float32 buffer, and return that buffer (``[P]``, P = trainable parameter count). Backward
    then accumulates in place; zero it with ``flat.zero_()``, never ``zero_grad(set_to_none=
    True)``, which would detach the views.

    Raises:
        ValueError: parameters of mixed devices or dtypes, or none trainable.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    if len({(p.device, p.dtype) for p in params}) != 1:
        raise ValueError("attach_flat_grads needs every parameter on one device, in one dtype")
    flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device,
                       dtype=params[0].dtype)  # fmt: skip
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def compile_counters() -> dict[str, int]:
    """``torch.compile``'s counters so far: graphs compiled (``unique_graphs``) and frames
    recompiled (``recompiles``, guard failures that led to a new compile)."""
    try:
        from torch._dynamo.utils import counters  # torch's own bookkeeping, no public API
    except ImportError:  # pragma: no cover - torch without dynamo
        return {"unique_graphs": 0, "recompiles": 0}
    stats = counters.get("stats", {})
    recompiles = sum(counters.get("recompiles", {}).values())
    return {"unique_graphs": int(stats.get("unique_graphs", 0)), "recompiles": int(recompiles)}


@dataclass
class StepStats:
    """What the step did so far: ``warmup_s`` (warm-up and capture of every capacity,
    compile included), the compile counters after warm-up (``compiled``) and now, and the
    captured capacities."""

    warmup_s: float = 0.0
    compiled_after_warmup: dict[str, int] = field(default_factory=dict)
    captured: list[Capacity] = field(default_factory=list)

    def recompiles_since_warmup(self) -> int:
        """Graphs compiled after the warm-up (0 in a healthy run)."""
        now = compile_counters()["unique_graphs"]
        return now - self.compiled_after_warmup.get("unique_graphs", now)


class _Captured:
    """Static device buffers, pinned host staging buffers and the CUDA graph of one capacity."""

    def __init__(self, capacity: Capacity, dim: int, device: torch.device) -> None:
        self.capacity = capacity
        shapes = {"x": ((capacity.tokens, dim), torch.float32),
                  "lengths": ((capacity.seqs,), torch.long),
                  "noise": ((capacity.tokens,), torch.float32),
                  "subset_noise": ((capacity.tokens,), torch.float32)}  # fmt: skip
        self.inputs = {k: torch.zeros(s, dtype=d, device=device) for k, (s, d) in shapes.items()}
        self.staging = {k: torch.zeros(s, dtype=d, pin_memory=True) for k, (s, d) in shapes.items()}
        self.inv_denom = torch.ones((), device=device)
        self.copied: torch.cuda.Event | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.err_sum: Tensor | None = None
        self.count: Tensor | None = None

    def tensors(self) -> tuple[Tensor, ...]:
        i = self.inputs
        return i["x"], i["lengths"], i["noise"], i["subset_noise"], self.inv_denom

    def load(self, batch: PackedWindows, inv_denom: float) -> None:
        """Copy a host batch into the static buffers: into pinned staging memory on the host
        (while the device still runs the previous step), then asynchronously to the device,
        queued after that step. Waits only for the previous copy out of the staging memory."""
        if self.copied is not None:
            self.copied.synchronize()
        for key in self.inputs:
            np.copyto(self.staging[key].numpy(), getattr(batch, key))
            self.inputs[key].copy_(self.staging[key], non_blocking=True)
        self.inv_denom.fill_(inv_denom)
        self.copied = torch.cuda.Event()
        self.copied.record()


class PackedStep:
    """Forward + backward of one packed micro-batch, its gradient added into the model's flat
    gradient buffer (see the module docstring).

    Args:
        model: an :class:`lvmae.mae.model.LVMAE` on ``device`` (not DDP-wrapped: gradients are
            synchronised by :meth:`all_reduce_grads`).
        kind, ratio, decoder_fraction, loss: masking and loss
            (:func:`lvmae.mae.packing.packed_loss`).
        device: where the model lives.
        precision: ``"bf16"`` (autocast to bfloat16; CUDA's default) or ``"fp32"``.
        backend: attention kernel (:data:`lvmae.mae.model.ATTENTION_BACKENDS`).
        graphs: capture and replay per capacity (CUDA only).
        compile: ``torch.compile`` each transformer block (the blocks only: the index math
            around them is small kernels that a graph replays anyway).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        kind: str,
        ratio: float,
        decoder_fraction: float = 1.0,
        loss: str = "mse",
        device: torch.device,
        precision: str = "fp32",
        backend: str = "auto",
        graphs: bool = False,
        compile: bool = False,
    ) -> None:
        if graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
        self.model, self.device = model, device
        self.kind, self.ratio, self.fraction, self.loss = kind, ratio, decoder_fraction, loss
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.backend, self.graphs = backend, graphs
        self.flat_grad = attach_flat_grads(model)
        self.stats = StepStats()
        self._captured: dict[Capacity, _Captured] = {}
        self._pending: dict[Capacity, _Captured] = {}
        self._pool = torch.cuda.graph_pool_handle() if graphs else None
        self._dim = model.config.input_dim
        if compile:
            _raise_recompile_limit(64)
            for block in [*model.blocks, *model.decoder_blocks]:
                # the packed-rows path only (evaluation's [B, L] path stays eager); dynamic
                # shapes: one graph per block kind serves every capacity
                block.rows = torch.compile(block.rows, dynamic=True)

    # ----------------------------------------------------------------------------- running

    def _forward_backward(
        self, tensors: tuple[Tensor, ...], capacity: Capacity, host_lengths=None
    ) -> tuple[Tensor, Tensor]:
        """``tensors``: x, lengths, noise, subset_noise and the normaliser's inverse."""
        x, lengths, noise, subset_noise, inv_denom = tensors
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):  # fmt: skip
            err_sum, count = packed_loss(
                self.model, x, lengths, noise, subset_noise, capacity=capacity, kind=self.kind,
                ratio=self.ratio, decoder_fraction=self.fraction, loss=self.loss,
                backend=self.backend, host_lengths=host_lengths,
            )  # fmt: skip
        (err_sum * inv_denom).backward()
        return err_sum.detach(), count

    def __call__(self, batch: PackedWindows, denom: float | None = None) -> tuple[Tensor, Tensor]:
        """Add the gradient of ``err_sum / denom`` of ``batch`` into the model's gradients.

        Args:
            batch: a :class:`lvmae.mae.packing.PackedWindows` (on the host).
            denom: the loss normaliser: ``batch.scored_tokens`` (default: the batch's mean),
                or the scored tokens of every micro-batch of the optimizer step on every
                worker, divided by the worker count (the mean over the step's tokens once
                :meth:`all_reduce_grads` has averaged; may be below 1). A host number, so
                nothing is read from the device; ``denom <= 0`` adds a zero gradient.

        Returns:
            ``(err_sum, count)``, float32 device scalars: the batch's summed error over its
            scored tokens and their count (``err_sum / count`` is its mean loss). Reading
            them on the host waits for the step: do it only when logging.
        """
        denom = float(batch.scored_tokens if denom is None else denom)
        # denom may be below 1 (a short last step's tokens / world under token budgets): only
        # a step with nothing scored (err_sum 0 anyway) must not divide by it
        inv = 1.0 / denom if denom > 0 else 0.0
        if not self.graphs:
            host = batch.host_lengths(self.ratio) if self.backend in ("split", "auto") else None
            t = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
                 for a in (batch.x, batch.lengths, batch.noise, batch.subset_noise)]  # fmt: skip
            inv_t = torch.tensor(inv, device=self.device)
            return self._forward_backward((*t, inv_t), batch.capacity, host)
        cap = self._capture(batch.capacity)
        cap.load(batch, inv)
        cap.graph.replay()
        return cap.err_sum.clone(), cap.count.clone()

    def warmup(self, capacities: list[Capacity]) -> float:
        """Compile and capture every capacity now (CUDA graphs; a no-op otherwise), so that no
        compile or capture happens during training. Leaves the gradients at zero. Returns the
        seconds it took (also in :attr:`stats`)."""
        t0 = time.perf_counter()
        order = sorted(set(capacities) - set(self._captured), reverse=True)
        for capacity in order:  # every warm-up (compiles) before any capture holds memory
            self._warm(self._buffers(capacity))
        for capacity in order:  # the largest first: the later captures reuse its pool
            self._capture(capacity, warm=False)
        self.flat_grad.zero_()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats.warmup_s += time.perf_counter() - t0
        self.stats.compiled_after_warmup = compile_counters()
        return self.stats.warmup_s

    def _buffers(self, capacity: Capacity) -> _Captured:
        cap = self._pending.get(capacity)
        if cap is None:
            cap = self._pending[capacity] = _Captured(capacity, self._dim, self.device)
            _fill_synthetic(cap, self.model.config.max_tokens, self.ratio)
        return cap

    def _warm(self, cap: _Captured) -> None:
        """Eager steps on a side stream (compile, cuBLAS and allocator set-up), gradients kept
        as they were; the memory they used goes back to the device afterwards."""
        saved = self.flat_grad.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._forward_backward(cap.tensors(), cap.capacity)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        self.flat_grad.copy_(saved)  # warm-up gradients are not training gradients
        torch.cuda.empty_cache()  # warm-up activations back to the device, for the graph pool

    def _capture(self, capacity: Capacity, warm: bool = True) -> _Captured:
        cap = self._captured.get(capacity)
        if cap is not None:
            return cap
        cap = self._buffers(capacity)
        if warm:
            self._warm(cap)
        saved = self.flat_grad.clone()
        cap.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cap.graph, pool=self._pool):
            cap.err_sum, cap.count = self._forward_backward(cap.tensors(), capacity)
        self.flat_grad.copy_(saved)  # the capture ran a step too
        self._captured[capacity] = cap
        self.stats.captured.append(capacity)
        return cap

    # ----------------------------------------------------------------------------- around

    def zero_grad(self) -> None:
        """Zero the gradient buffer (one kernel; the ``.grad`` views stay attached)."""
        self.flat_grad.zero_()

    def all_reduce_grads(self) -> None:
        """Average the gradient buffer over the data-parallel workers (one all-reduce; NCCL
        on GPUs, gloo on CPU; nothing without an initialised process group of 2+ ranks)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.flat_grad)
            self.flat_grad.div_(dist.get_world_size())


def _raise_recompile_limit(limit: int) -> None:
    """Let ``torch.compile`` keep ``limit`` graphs per code object (its default, 8, is reached
    by the encoder and decoder blocks of a few models in one process, after which it would
    silently run them eagerly)."""
    import torch._dynamo  # torch.compile's front end

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):  # fmt: skip
        if hasattr(torch._dynamo.config, name):
            current = getattr(torch._dynamo.config, name)
            setattr(torch._dynamo.config, name, max(current, limit * (8 if "accum" in name else 1)))


def _fill_synthetic(cap: _Captured, max_tokens: int, ratio: float) -> None:
    """Plausible warm-up data for a capacity: windows of up to ``max_tokens`` tokens filling
    as much of it as fits (the shapes are what matters; the values only need to be finite)."""
    c = cap.capacity
    lengths: list[int] = []
    while len(lengths) < c.seqs:
        n = min(max_tokens, c.tokens - sum(lengths))
        while n > 0 and not c.fits(needed_capacity([*lengths, n], ratio)):
            n //= 2
        if n <= 0:
            break
        lengths.append(n)
    padded = np.zeros(c.seqs, dtype=np.int64)
    padded[: len(lengths)] = lengths
    i = cap.inputs
    i["lengths"].copy_(torch.from_numpy(padded))
    torch.nn.init.normal_(i["x"])
    i["x"].copy_(torch.nn.functional.normalize(i["x"], dim=-1))
    i["noise"].uniform_()
    i["subset_noise"].uniform_()
