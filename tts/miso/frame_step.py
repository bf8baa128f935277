"""One batched frame step of a MisoModel, timed: eager, or replayed from CUDA graphs.

A frame is a backbone pass and 31 depth-decoder passes, each a few small kernels per layer:
at batch 1 on a big GPU, launching them costs more than running them. So on CUDA the two
halves of a step (backbone + codebook 0; the depth decoder) are each captured once per
(batch rows, codebooks) into a CUDA graph and replayed with one launch. Shapes are static:
inputs are copied into fixed buffers, the KV caches are fixed-size, and sampling never
reads a value back to the host (tts/miso/model.py); the only host sync is reading the
finished frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tts.miso.model import MisoModel


@dataclass(frozen=True)
class StepInputs:
    """One step's inputs for rows 0..b-1: (b, 1, N+1) tokens and mask, (b, 1) positions,
    temperatures and top-k, (b, N, vocab) Exp(1) noise; ``wanted`` codebooks."""

    tokens: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    temperature: torch.Tensor
    topk: torch.Tensor
    noise: torch.Tensor
    wanted: int


@dataclass(frozen=True)
class StepTiming:
    rows: int
    backbone_ms: float
    decoder_ms: float


class EagerFrameStep:
    """The step as plain calls."""

    def __init__(self, model: MisoModel):
        self.model = model
        self.device = next(model.parameters()).device

    def prepare(self, rows, wanted: int) -> None:
        """Nothing to prepare for plain calls."""

    def __call__(self, step: StepInputs) -> tuple[torch.Tensor, StepTiming]:
        """Frames (b, N) on the CPU, and how long each half took."""
        model, rows = self.model, slice(0, step.tokens.shape[0])
        inputs = [
            t.to(self.device)
            for t in (step.tokens, step.mask, step.positions, step.temperature, step.topk)
        ]
        tokens, mask, positions, temperature, topk = inputs
        noise = step.noise.to(self.device)
        clock = _Clock(self.device)
        last_h, c0 = model.backbone_frame(
            tokens, mask, positions, temperature, topk, rows=rows, noise=noise
        )
        clock.mark()
        frames = model.decoder_frame(
            last_h, c0, temperature, topk, None, step.wanted, rows=rows, noise=noise
        )
        clock.mark()
        frames = frames.to("cpu", torch.long)  # the one host sync
        backbone_ms, decoder_ms = clock.elapsed_ms()
        return frames, StepTiming(rows.stop, backbone_ms, decoder_ms)


class CudaGraphFrameStep:
    """The step replayed from CUDA graphs, captured on first use of each (rows, codebooks)."""

    def __init__(self, model: MisoModel):
        self.model = model
        self.device = next(model.parameters()).device
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, not {self.device}")
        self._graphs: dict[tuple[int, int], _CapturedStep] = {}
        self._pool = torch.cuda.graph_pool_handle()
        self._eager = EagerFrameStep(model)

    def prepare(self, rows, wanted: int) -> None:
        """Capture the graphs for each batch size in ``rows`` at ``wanted`` codebooks.
        Call before serving: a capture must not overlap other GPU work of this process."""
        for b in rows:
            if (b, wanted) not in self._graphs:
                self._graphs[b, wanted] = _CapturedStep(self.model, b, wanted, self._pool)

    def __call__(self, step: StepInputs) -> tuple[torch.Tensor, StepTiming]:
        captured = self._graphs.get((step.tokens.shape[0], step.wanted))
        if captured is None:
            # Not prepared (a codebook count nobody announced): run it eagerly rather than
            # capture while other threads use the GPU.
            return self._eager(step)
        return captured.run(step)


class _CapturedStep:
    def __init__(self, model: MisoModel, rows: int, wanted: int, pool):
        cfg = model.config
        device = next(model.parameters()).device
        n = cfg.audio_num_codebooks
        # Fixed input buffers; every row parked, so capturing writes no real cache entry.
        self.tokens = torch.zeros(rows, 1, n + 1, dtype=torch.long, device=device)
        self.mask = torch.zeros(rows, 1, n + 1, dtype=torch.bool, device=device)
        self.positions = torch.full(
            (rows, 1), model.parking_position, dtype=torch.long, device=device
        )
        self.temperature = torch.ones(rows, 1, device=device)
        self.topk = torch.ones(rows, 1, dtype=torch.long, device=device)
        self.noise = torch.ones(rows, n, cfg.audio_vocab_size, device=device)
        span = slice(0, rows)

        def backbone():
            return model.backbone_frame(
                self.tokens,
                self.mask,
                self.positions,
                self.temperature,
                self.topk,
                rows=span,
                noise=self.noise,
            )

        def decoder(last_h, c0):
            return model.decoder_frame(
                last_h, c0, self.temperature, self.topk, None, wanted, rows=span, noise=self.noise
            )

        # Warm up on a side stream (lazy initialisation must not happen during capture).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                decoder(*backbone())
        torch.cuda.current_stream().wait_stream(side)
        self.backbone_graph, self.decoder_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        # Thread-local capture: other threads' CUDA calls (another library's, say) do not
        # invalidate it; they must still not use this stream meanwhile.
        with torch.inference_mode():
            with torch.cuda.graph(self.backbone_graph, pool=pool,
                                  capture_error_mode="thread_local"):
                self.last_h, self.c0 = backbone()
            with torch.cuda.graph(self.decoder_graph, pool=pool,
                                  capture_error_mode="thread_local"):
                self.frames = decoder(self.last_h, self.c0)
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]

    def run(self, step: StepInputs) -> tuple[torch.Tensor, StepTiming]:
        for buffer, value in (
            (self.tokens, step.tokens),
            (self.mask, step.mask),
            (self.positions, step.positions),
            (self.temperature, step.temperature),
            (self.topk, step.topk),
            (self.noise, step.noise),
        ):
            buffer.copy_(value, non_blocking=True)
        start, middle, end = self.events
        start.record()
        self.backbone_graph.replay()
        middle.record()
        self.decoder_graph.replay()
        end.record()
        frames = self.frames.to("cpu", torch.long)  # the one host sync
        timing = StepTiming(
            self.tokens.shape[0], start.elapsed_time(middle), middle.elapsed_time(end)
        )
        return frames, timing


class _Clock:
    """Wall-clock marks on the CPU; CUDA events (read after the step's sync) on a GPU."""

    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        if self._cuda:
            self._marks = [torch.cuda.Event(enable_timing=True)]
            self._marks[0].record()
        else:
            self._marks = [time.perf_counter()]

    def mark(self) -> None:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def elapsed_ms(self) -> list[float]:
        pairs = zip(self._marks, self._marks[1:])
        if self._cuda:
            return [a.elapsed_time(b) for a, b in pairs]
        return [(b - a) * 1000 for a, b in pairs]


def frame_step(model: MisoModel, cuda_graphs: bool | None = None):
    """The step for ``model``: CUDA graphs on a CUDA device unless ``cuda_graphs`` is
    False; eager elsewhere (there are no graphs to replay on a CPU)."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    use_graphs = on_cuda if cuda_graphs is None else cuda_graphs and on_cuda
    return CudaGraphFrameStep(model) if use_graphs else EagerFrameStep(model)
