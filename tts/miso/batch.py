"""Frames for many conversations at once: one MisoTTS model, one batched step per frame.

Each session owns a row of the model's key/value caches and keeps it between utterances.
The row remembers which frames (tokens and masks) fill its positions; a new utterance's
prompt is compared with them and only what differs is read (prefilled): usually the user's
new turn or the bot's last sentence, and the text to speak. The rest of the conversation is
not read again.

Utterances of different sessions are generated together: each step feeds every running row
its next frame at its own position, and runs the backbone once and the depth decoder's
steps once for all of them. A row joins the batch when its prompt has been read (in pieces
of ``PREFILL_CHUNK`` positions, between steps, so running rows are not held up for long)
and leaves it at its end frame, at its duration limit, or when its reader walks away.

One thread owns the model; callers read a FrameStream. Model code knows nothing of sessions
beyond the cache row it is told to use (tts/miso/model.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from tts.miso.frame_step import StepInputs, StepTiming, frame_step
from tts.miso.model import MisoModel

logger = logging.getLogger(__name__)

# Prompt positions read per engine step for a joining row: bounded so that a long prompt
# delays the running rows' next frame by one chunk's time, not by the whole prompt's.
PREFILL_CHUNK = 256


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.9
    topk: int = 50
    num_codebooks: int | None = None  # None: all of them
    seed: int | None = None


class FrameStream:
    """The frames of one utterance, each a (N,) int64 CPU tensor, as they are made. Stops
    at the end frame (not yielded) or the duration limit; ``close()`` abandons it and frees
    its row for others."""

    def __init__(self, batcher: FrameBatcher, utterance: _Utterance):
        self._batcher = batcher
        self._utterance = utterance
        self._done = False

    @property
    def reused_positions(self) -> int:
        """Prompt positions found already in the session's cache row (not read again);
        known once the utterance has a row."""
        self._utterance.started.wait()
        return self._utterance.reused

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self._done:
            raise StopIteration
        item = self._utterance.frames.get()
        if item is None:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            # Each reader gets its own exception (the cause is shared by the whole batch).
            raise RuntimeError(f"MisoTTS frame generation failed: {item}") from item  # noqa: TRY004
        return item

    def close(self) -> None:
        self._batcher._cancel(self._utterance)

    def __del__(self):
        # No lock here (this may run at interpreter exit): the engine thread polls while
        # any utterance exists, so it sees the flag without being woken.
        self._utterance.cancelled = True


class _Row:
    """One row of the KV caches: whose it is, and what fills its positions."""

    def __init__(self, index: int):
        self.index = index
        self.session: Hashable | None = None
        self.busy: _Utterance | None = None
        self.idle_since = 0.0
        self._pieces: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tokens, mask) pieces
        self.length = 0

    def clear(self) -> None:
        self._pieces, self.length = [], 0

    def append(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        self._pieces.append((tokens, mask))
        self.length += tokens.shape[0]

    def common_prefix(self, tokens: torch.Tensor, mask: torch.Tensor) -> int:
        """How many leading positions of (tokens, mask) the row already holds."""
        if not self.length:
            return 0
        held_tokens = torch.cat([t for t, _ in self._pieces])
        held_mask = torch.cat([m for _, m in self._pieces])
        n = min(self.length, tokens.shape[0])
        same = (held_tokens[:n] == tokens[:n]).all(1) & (held_mask[:n] == mask[:n]).all(1)
        differs = (~same).nonzero()
        return n if not len(differs) else int(differs[0])

    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` positions' record (the cache beyond is stale)."""
        if length >= self.length:
            return
        tokens = torch.cat([t for t, _ in self._pieces])[:length]
        mask = torch.cat([m for _, m in self._pieces])[:length]
        self._pieces, self.length = ([(tokens, mask)] if length else []), length


class _Utterance:
    def __init__(self, session, tokens, mask, max_frames, sampling: Sampling, generator):
        self.session = session
        self.tokens, self.mask = tokens, mask  # (L, N+1) on the CPU
        self.max_frames = max_frames
        self.sampling = sampling  # num_codebooks resolved (never None)
        self.generator = generator
        self.frames: queue.SimpleQueue = queue.SimpleQueue()
        self.started = threading.Event()
        self.cancelled = False
        self.row: _Row | None = None
        self.reused = 0
        self.read_upto = 0  # prompt positions in the cache
        self.made = 0
        # What the next step feeds this row: (1, N+1) tokens and mask, at next_pos.
        self.next_tokens = self.next_mask = None
        self.next_pos = 0

    @property
    def ready(self) -> bool:
        return self.next_tokens is not None

    @property
    def wanted(self) -> int:
        """Codebooks this utterance generates."""
        return self.sampling.num_codebooks


class FrameBatcher:
    """Generates frames for up to ``rows`` utterances at once on ``model``.

    ``cuda_graphs``: replay each step from CUDA graphs (default: on a CUDA device).
    ``on_step`` is called (from the engine thread) with every step's timing."""

    def __init__(
        self,
        model: MisoModel,
        rows: int = 1,
        *,
        cuda_graphs: bool | None = None,
        on_step: Callable[[StepTiming], None] | None = None,
    ):
        if rows < 1:
            raise ValueError(f"rows must be at least 1, got {rows}")
        owner = getattr(model, "_frame_batcher", None)
        if owner is not None and not owner._closed:
            raise RuntimeError(
                "this MisoModel already serves a FrameBatcher (its KV caches are that "
                "batcher's); close it first, or load another model"
            )
        model._frame_batcher = self
        self.model = model
        self.device = next(model.parameters()).device
        self.num_codebooks = model.config.audio_num_codebooks
        self.text_vocab_size = model.config.text_vocab_size
        self.audio_vocab_size = model.config.audio_vocab_size
        model.setup_caches(rows)
        self._frame_step = frame_step(model, cuda_graphs)
        # CUDA graphs are captured now, for every batch size, before anything is served:
        # capturing while other threads use the GPU (e.g. decoding audio) would break.
        self._frame_step.prepare(range(1, rows + 1), self.num_codebooks)
        self.on_step = on_step
        self._rows = [_Row(i) for i in range(rows)]
        self._row_of: dict[Hashable, _Row] = {}
        self._waiting: list[_Utterance] = []
        self._running: list[_Utterance] = []
        self._cond = threading.Condition()
        self._closed = False
        # Prompt positions read into the cache, and found there already (not read again).
        self.positions_read = 0
        self.positions_reused = 0
        self._thread = threading.Thread(target=self._run, name="miso-frames", daemon=True)
        self._thread.start()

    # -- the callers' side ---------------------------------------------------------------

    def generate(
        self,
        session: Hashable | None,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        max_frames: int,
        sampling: Sampling = Sampling(),
    ) -> FrameStream:
        """Frames continuing the prompt ``tokens``/``mask`` (L, N+1), at most ``max_frames``.
        ``session`` keeps its row (and so its prompt's reading) for its next utterance;
        None is a one-off."""
        self._check_request(tokens, mask, max_frames, sampling)
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        sampling = Sampling(
            sampling.temperature,
            min(sampling.topk, self.audio_vocab_size),
            sampling.num_codebooks or self.num_codebooks,
            sampling.seed,
        )
        utterance = _Utterance(
            session, tokens.cpu().long(), mask.cpu().bool(), max_frames, sampling, generator
        )
        with self._cond:
            if self._closed or not self._thread.is_alive():
                raise RuntimeError("the MisoTTS frame batcher is closed")
            self._waiting.append(utterance)
            self._cond.notify_all()
        return FrameStream(self, utterance)

    def prepare(self, num_codebooks: int) -> None:
        """Get ready for utterances of ``num_codebooks`` codebooks (all are, at start):
        on CUDA, capture their graphs now rather than while serving."""
        self._frame_step.prepare(range(1, len(self._rows) + 1), num_codebooks)

    def _check_request(self, tokens, mask, max_frames: int, sampling: Sampling) -> None:
        """Refuse here, in the caller's thread, what would fail inside a batched step and
        so fail every other session's utterance with it."""
        if not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"max_frames must be a positive integer, got {max_frames!r}")
        if (
            tokens.dim() != 2
            or tokens.shape != mask.shape
            or tokens.shape[1] != (self.num_codebooks + 1)
            or tokens.shape[0] == 0
        ):
            raise ValueError(
                f"prompt must be (positions, {self.num_codebooks + 1}) tokens "
                f"and mask, got {tuple(tokens.shape)} and {tuple(mask.shape)}"
            )
        if tokens.shape[0] + max_frames > self.model.parking_position:
            raise ValueError(
                f"{tokens.shape[0]} prompt positions + {max_frames} frames exceed "
                f"{self.model.parking_position}"
            )
        wanted = sampling.num_codebooks or self.num_codebooks
        if not 1 <= wanted <= self.num_codebooks:
            raise ValueError(f"num_codebooks must be in 1..{self.num_codebooks}, got {wanted}")
        if not sampling.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {sampling.temperature}")
        if sampling.topk < 1:
            raise ValueError(f"topk must be >= 1, got {sampling.topk}")
        if tokens.is_floating_point() or mask.dtype != torch.bool:
            raise ValueError("prompt tokens must be integers and its mask booleans")
        audio, text = tokens[:, :-1], tokens[:, -1]
        if int(audio.min()) < 0 or int(audio.max()) >= self.audio_vocab_size:
            raise ValueError(
                f"audio codes must lie in [0, {self.audio_vocab_size}), got "
                f"{int(audio.min())}..{int(audio.max())}"
            )
        if int(text.min()) < 0 or int(text.max()) >= self.text_vocab_size:
            raise ValueError(
                f"text token ids must lie in [0, {self.text_vocab_size}), got "
                f"{int(text.min())}..{int(text.max())}"
            )

    def forget(self, session: Hashable) -> None:
        """The session has ended: its row is free (its utterance, if any, is abandoned)."""
        with self._cond:
            for utterance in self._waiting:
                if utterance.session == session:
                    utterance.cancelled = True
            row = self._row_of.pop(session, None)
            if row is not None:
                if row.busy is not None:
                    row.busy.cancelled = True
                row.session = None
                row.clear()
            self._cond.notify_all()

    def sessions(self) -> int:
        with self._cond:
            return len(self._row_of)

    def busy_rows(self) -> int:
        with self._cond:
            return sum(row.busy is not None for row in self._rows)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        if getattr(self.model, "_frame_batcher", None) is self:
            self.model._frame_batcher = None

    def _cancel(self, utterance: _Utterance) -> None:
        with self._cond:
            utterance.cancelled = True
            self._cond.notify_all()

    # -- the engine thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            # However the loop ended, nobody is left waiting on it.
            with self._cond:
                self._closed = True
                for utterance in self._waiting + self._running:
                    utterance.started.set()
                    utterance.frames.put(RuntimeError("the MisoTTS frame batcher closed"))
                self._waiting.clear()
                self._running.clear()

    def _serve(self) -> None:
        while True:
            with self._cond:
                self._drop_cancelled()
                while not self._closed and not self._running and not self._waiting:
                    self._cond.wait()
                    self._drop_cancelled()
                if self._closed:
                    return
                self._take_rows()
                joining = next((u for u in self._running if not u.ready), None)
                ready = [u for u in self._running if u.ready]
                if joining is None and not ready:
                    # Everything waits for a row that a running utterance holds.
                    self._cond.wait(timeout=0.05)
                    continue
            try:
                with torch.inference_mode():
                    if joining is not None:
                        self._read_prompt(joining)
                    if ready:
                        self._step(ready)
            except Exception as exc:  # noqa: BLE001 - handed to every reader, not swallowed
                with self._cond:
                    for utterance in list(self._running):
                        utterance.row.clear()  # what its cache holds is unknown now
                        self._finish(utterance, exc)

    def _drop_cancelled(self) -> None:
        for utterance in [u for u in self._waiting if u.cancelled]:
            self._waiting.remove(utterance)
            utterance.started.set()
            utterance.frames.put(None)
        for utterance in [u for u in self._running if u.cancelled]:
            self._finish(utterance)

    def _finish(self, utterance: _Utterance, error: BaseException | None = None) -> None:
        self._running.remove(utterance)
        row = utterance.row
        row.busy = None
        row.idle_since = time.monotonic()
        if row.session is None:
            row.clear()  # a one-off: nobody will continue it
        utterance.frames.put(error)

    def _take_rows(self) -> None:
        """Give waiting utterances rows: the session's own, else a free one, else the one
        idle longest (its session reads its prompt afresh next time)."""
        for utterance in list(self._waiting):
            row = self._row_of.get(utterance.session) if utterance.session is not None else None
            if row is not None and row.busy is not None:
                continue  # the session's previous utterance is still being made
            if row is None:
                row = self._spare_row()
                if row is None:
                    continue
                if row.session is not None:
                    del self._row_of[row.session]
                row.session = utterance.session
                row.clear()
                if utterance.session is not None:
                    self._row_of[utterance.session] = row
            length = utterance.tokens.shape[0]
            # The last prompt position is read by the first step, which predicts from it.
            start = min(row.common_prefix(utterance.tokens, utterance.mask), length - 1)
            row.truncate(start)
            utterance.row, utterance.reused, utterance.read_upto = row, start, start
            self.positions_reused += start
            row.busy = utterance
            self._waiting.remove(utterance)
            self._running.append(utterance)
            if start == length - 1:
                self._join(utterance)
            utterance.started.set()

    def _spare_row(self) -> _Row | None:
        free = [row for row in self._rows if row.session is None and row.busy is None]
        if free:
            return free[0]
        idle = [row for row in self._rows if row.busy is None]
        return min(idle, key=lambda row: row.idle_since) if idle else None

    def _join(self, utterance: _Utterance) -> None:
        last = utterance.tokens.shape[0] - 1
        utterance.next_tokens = utterance.tokens[last:]
        utterance.next_mask = utterance.mask[last:]
        utterance.next_pos = last

    def _read_prompt(self, utterance: _Utterance) -> None:
        """Read the next chunk of a joining utterance's prompt into its row."""
        start = utterance.read_upto
        end = min(start + PREFILL_CHUNK, utterance.tokens.shape[0] - 1)
        row = utterance.row
        device = self.device
        self.model.backbone_step(
            utterance.tokens[None, start:end].to(device),
            utterance.mask[None, start:end].to(device),
            torch.arange(start, end, device=device)[None],
            rows=slice(row.index, row.index + 1),
        )
        with self._cond:
            row.append(utterance.tokens[start:end], utterance.mask[start:end])
            utterance.read_upto = end
            self.positions_read += end - start
            if end == utterance.tokens.shape[0] - 1:
                self._join(utterance)

    def _step(self, ready: list[_Utterance]) -> None:
        """One frame for every ready utterance, in one batched pass over rows 0..b-1.
        Rows in between that take no part are fed a dummy frame at the parking position."""
        n, vocab = self.num_codebooks, self.model.config.audio_vocab_size
        b = max(u.row.index for u in ready) + 1
        tokens = torch.zeros(b, 1, n + 1, dtype=torch.long)
        mask = torch.zeros(b, 1, n + 1, dtype=torch.bool)
        positions = torch.full((b, 1), self.model.parking_position, dtype=torch.long)
        temperature = torch.ones(b, 1)
        topk = torch.ones(b, 1, dtype=torch.long)
        noise = torch.ones(b, n, vocab, device=self.device)
        for u in ready:
            i = u.row.index
            tokens[i], mask[i], positions[i] = u.next_tokens, u.next_mask, u.next_pos
            temperature[i], topk[i] = u.sampling.temperature, u.sampling.topk
            noise[i].exponential_(1, generator=u.generator)
        frames, timing = self._frame_step(
            StepInputs(
                tokens, mask, positions, temperature, topk, noise, max(u.wanted for u in ready)
            )
        )  # frames (b, N) on the CPU
        if self.on_step is not None:
            try:
                self.on_step(timing)
            except Exception:
                logger.exception("FrameBatcher.on_step failed")
        with self._cond:
            for u in ready:
                u.row.append(u.next_tokens, u.next_mask)
                frame = frames[u.row.index].clone()
                frame[u.wanted :] = 0
                u.made += 1
                if not frame.any():  # the all-zero end frame
                    self._finish(u)
                    continue
                u.frames.put(frame)
                if u.made == u.max_frames:
                    self._finish(u)
                    continue
                # A generated frame is fed back with its sampled codebooks, text hidden.
                u.next_tokens = torch.cat([frame, frame.new_zeros(1)])[None]
                next_mask = torch.zeros(1, n + 1, dtype=torch.bool)
                next_mask[0, : u.wanted] = True
                u.next_mask = next_mask
                u.next_pos += 1
