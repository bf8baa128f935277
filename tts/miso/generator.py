"""Speech from a MisoTTS model: context segments in, audio chunks out as frames are made.

The model reads one sequence of at most ``max_seq_len`` (2048) positions: the context
segments, each its text (``[speaker] text`` with BOS/EOS, one position per token) then its
audio (one position per 80 ms Mimi frame, then one all-zero end-of-audio frame), then the
text to speak, then the frames being generated. Whatever does not fit is dropped oldest
segment first; a voice-prompt segment, which fixes the bot's voice, is never dropped.

Generation stops at an all-zero frame or at the duration limit. Frames are decoded by a
streaming Mimi decoder in chunks, so the first audio is out after ``first_chunk_frames``
frames rather than after the whole utterance.

Frames are made by a FrameBatcher (tts/miso/batch.py): utterances of several sessions are
generated together, and a session's conversation stays read in the model's cache between
its utterances. So that it stays valid, a session's context keeps its oldest segment for as
long as it fits; when it no longer does, the context is cut back to ``REFILL_FRACTION`` of
what it held at once, so the conversation is read afresh only now and then, not at every
sentence once the budget is full.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch

from tts.miso.batch import FrameBatcher, Sampling
from tts.miso.codec import MimiCodec
from tts.miso.model import MisoModel
from tts.miso.text import TextTokenizer

FRAME_SECS = 0.08
# When a session's context must be read afresh (it outgrew the budget), the newest segments
# filling this share of it are kept: room for several more turns before the next reading.
REFILL_FRACTION = 0.5


@dataclass(frozen=True)
class Segment:
    """A stretch of conversation: who spoke, the words, and the sound.

    ``audio`` is mono float in [-1, 1] at ``sample_rate`` (the codec's, 24 kHz).
    ``codes`` may carry the audio's Mimi codes (num_codebooks, frames) when they are
    already known, e.g. for speech this generator made, so they are not encoded again.
    """

    speaker: int
    text: str
    audio: torch.Tensor
    sample_rate: int = 24_000
    codes: torch.Tensor | None = None
    # How many of ``codes``' codebooks are real: speech generated with fewer codebooks has
    # zeros in the rest, which the model is not shown (as when it generated them).
    codebooks: int | None = None


@dataclass(frozen=True)
class GeneratedChunk:
    """Audio (1-D float at the codec's rate) and the frames (num_codebooks, n) it was
    decoded from, as the model made them."""

    audio: torch.Tensor
    codes: torch.Tensor


@dataclass(frozen=True)
class ContextPlan:
    """What goes into the model for one utterance, and how many positions it uses."""

    tokens: torch.Tensor  # (seq, N+1)
    mask: torch.Tensor  # (seq, N+1)
    kept_segments: int
    dropped_segments: int
    max_frames: int
    # The first kept context segment, by content (for keeping a session's start put).
    first_segment: bytes | None = None


class ContextTooLongError(ValueError):
    """The text to speak (with the voice prompt) leaves no room to generate audio."""


class MisoGenerator:
    """Tokenizes, keeps the 2048-position budget and streams audio. Calls from several
    threads are generated together, up to ``sessions`` at a time (one cache row each);
    more wait for a row."""

    def __init__(
        self,
        model: MisoModel,
        text_tokenizer: TextTokenizer,
        codec: MimiCodec,
        voice_prompt: Segment | None = None,
        speakers: Sequence[int] | None = None,
        encoded_cache_size: int = 32,
        sessions: int = 1,
        cuda_graphs: bool | None = None,
    ):
        if codec.num_codebooks != model.config.audio_num_codebooks:
            raise ValueError(
                f"codec gives {codec.num_codebooks} codebooks, the model expects "
                f"{model.config.audio_num_codebooks}"
            )
        self.model = model
        self.text_tokenizer = text_tokenizer
        self.codec = codec
        self.speakers = None if speakers is None else frozenset(speakers)
        self.max_seq_len = model.config.backbone.max_seq_len
        self.num_codebooks = model.config.audio_num_codebooks
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()
        self._encoded: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._encoded_cache_size = encoded_cache_size
        self.frames = FrameBatcher(model, rows=sessions, cuda_graphs=cuda_graphs)
        # Each session's first kept context segment (ContextPlan.first_segment).
        self._first_segment: dict[object, bytes] = {}
        self._voice_prompt_frames = None
        self.set_voice_prompt(voice_prompt)

    def set_voice_prompt(self, segment: Segment | None) -> None:
        """A segment that opens every context and is never dropped: the bot's voice."""
        frames = None if segment is None else self.tokenize_segment(segment)
        with self._lock:
            self.voice_prompt, self._voice_prompt_frames = segment, frames

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    # -- tokenizing ----------------------------------------------------------------------

    def _check_speaker(self, speaker: int) -> None:
        if not isinstance(speaker, int) or isinstance(speaker, bool) or speaker < 0:
            raise ValueError(f"speaker must be a non-negative integer id, got {speaker!r}")
        if self.speakers is not None and speaker not in self.speakers:
            raise ValueError(
                f"unknown speaker id {speaker}; this conversation has {sorted(self.speakers)}"
            )

    def tokenize_text(self, text: str, speaker: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(len, N+1) frames with only the text column set."""
        self._check_speaker(speaker)
        ids = self.text_tokenizer.encode_segment(text, speaker)
        tokens = torch.zeros(len(ids), self.num_codebooks + 1, dtype=torch.long)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        tokens[:, -1] = torch.tensor(ids)
        mask[:, -1] = True
        return tokens, mask

    def audio_codes(self, segment: Segment) -> torch.Tensor:
        """The segment's Mimi codes (N, frames), encoded once per distinct audio."""
        if segment.codes is not None:
            return segment.codes
        audio = segment.audio
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"segment audio must be a torch tensor, got {type(audio).__name__}")
        if segment.sample_rate != self.codec.sample_rate:
            raise ValueError(
                f"segment audio is at {segment.sample_rate} Hz; resample it to "
                f"{self.codec.sample_rate} Hz first"
            )
        audio = audio.detach().to("cpu", torch.float32).contiguous()
        key = hashlib.sha1(audio.numpy().tobytes()).digest()
        with self._lock:
            codes = self._encoded.get(key)
            if codes is not None:
                self._encoded.move_to_end(key)
                return codes
        codes = self.codec.encode(audio).to("cpu")  # validates shape, emptiness, NaN
        with self._lock:
            self._encoded[key] = codes
            while len(self._encoded) > self._encoded_cache_size:
                self._encoded.popitem(last=False)
        return codes

    def tokenize_audio(self, codes: torch.Tensor,
                       codebooks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames+1, N+1): one position per frame, then the all-zero end-of-audio frame.
        Only the first ``codebooks`` (default all) are shown to the model."""
        frames = codes.shape[1]
        tokens = torch.zeros(frames + 1, self.num_codebooks + 1, dtype=torch.long)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        tokens[:frames, :-1] = codes.T
        shown = self.num_codebooks if codebooks is None else codebooks
        mask[:frames, :shown] = True
        mask[frames, :-1] = True
        return tokens, mask

    def tokenize_segment(self, segment: Segment) -> tuple[torch.Tensor, torch.Tensor]:
        text_tokens, text_mask = self.tokenize_text(segment.text, segment.speaker)
        codebooks = segment.codebooks if segment.codes is not None else None
        audio_tokens, audio_mask = self.tokenize_audio(self.audio_codes(segment), codebooks)
        return torch.cat([text_tokens, audio_tokens]), torch.cat([text_mask, audio_mask])

    # -- the context budget --------------------------------------------------------------

    def plan(self, text: str, speaker: int, context: Sequence[Segment],
             max_audio_secs: float, *, keep_from: bytes | None = None,
             cut_back: bool = False) -> ContextPlan:
        """The prompt for speaking ``text``: as many of the newest ``context`` segments as
        fit beside the voice prompt, the text, and room for ``max_audio_secs`` of audio.

        For a session whose reading is kept in the model's cache: ``keep_from`` (its
        previous plan's ``first_segment``) keeps the context starting at that segment while
        it is there and everything from it fits, so what the cache holds stays valid; and
        with ``cut_back``, a context that is read afresh anyway (it no longer fits, or its
        held start has left the dialogue) is cut to the newest segments filling
        ``REFILL_FRACTION`` of it, so the next turns fit after them without another reading.

        Positions: prompt + generated frames <= max_seq_len (each generated frame is fed
        back at the next position; the frame after the last one is never needed)."""
        max_frames = max(1, int(max_audio_secs / FRAME_SECS))
        gen_tokens, gen_mask = self.tokenize_text(text, speaker)
        with self._lock:
            fixed = [] if self._voice_prompt_frames is None else [self._voice_prompt_frames]
        fixed_len = sum(t.shape[0] for t, _ in fixed)
        budget = self.max_seq_len - max_frames - gen_tokens.shape[0] - fixed_len
        if budget < 0:
            raise ContextTooLongError(
                f"text of {gen_tokens.shape[0]} tokens"
                + (f" and a voice prompt of {fixed_len} positions" if fixed_len else "")
                + f" leave no room for {max_frames} audio frames ({max_audio_secs:g} s) in "
                f"{self.max_seq_len} positions; shorten the text"
            )
        # Newest first, while they fit: the kept ones are a contiguous, most recent run, and
        # older segments are never tokenized (nor their audio encoded).
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        used = 0
        for segment in reversed(context):
            frames = self.tokenize_segment(segment)
            if used + frames[0].shape[0] > budget:
                break
            used += frames[0].shape[0]
            kept.append(frames)
        kept.reverse()
        fits_all = len(kept) == len(context)
        keys = [_frames_key(frames) for frames in kept]
        if keep_from in keys:
            start = keys.index(keep_from)  # the oldest copy: where the held reading starts
        elif cut_back and (not fits_all or keep_from is not None):
            # The held start no longer fits, or has left the dialogue: this reading is
            # afresh anyway, so keep only the newest segments that fill REFILL_FRACTION of
            # what is there, and the next turns fit after them without another.
            start, target = 0, REFILL_FRACTION * used
            while start < len(kept) - 1 and used > target:
                used -= kept[start][0].shape[0]
                start += 1
        else:
            start = 0
        kept, keys = kept[start:], keys[start:]
        parts = fixed + kept + [(gen_tokens, gen_mask)]
        return ContextPlan(
            tokens=torch.cat([t for t, _ in parts]),
            mask=torch.cat([m for _, m in parts]),
            kept_segments=len(kept),
            dropped_segments=len(context) - len(kept),
            max_frames=max_frames,
            first_segment=keys[0] if kept else None,
        )

    # -- generating ----------------------------------------------------------------------

    @torch.inference_mode()
    def stream(
        self,
        text: str,
        speaker: int,
        context: Sequence[Segment] = (),
        *,
        session: Hashable | None = None,
        max_audio_secs: float = 15.0,
        temperature: float = 0.9,
        topk: int = 50,
        seed: int | None = None,
        num_codebooks: int | None = None,
        first_chunk_frames: int = 1,
        chunk_frames: int = 4,
        on_plan: Callable[[ContextPlan], None] | None = None,
    ) -> Iterator[GeneratedChunk]:
        """Speak ``text`` as ``speaker`` after ``context``, yielding audio as it is made.

        ``session`` names the conversation: its context stays read in the model's cache
        for its next utterance (call ``forget`` when it ends); None is a one-off.
        ``num_codebooks`` < N generates and decodes only the first codebooks (faster,
        coarser). ``seed`` makes a run reproducible. ``on_plan`` sees the context used."""
        if first_chunk_frames < 1 or chunk_frames < 1:
            raise ValueError("chunk sizes must be at least one frame")
        sampling = self._sampling(temperature, topk, num_codebooks, seed)
        frames = self._start(text, speaker, context, session, max_audio_secs, sampling, on_plan)
        decoder = self.codec.streaming_decoder()
        try:
            pending: list[torch.Tensor] = []
            target = first_chunk_frames
            for frame in frames:
                pending.append(frame)
                if len(pending) == target:
                    yield self._decode(pending, decoder.decode, sampling.num_codebooks)
                    pending, target = [], chunk_frames
            if pending:
                yield self._decode(pending, decoder.decode, sampling.num_codebooks)
        finally:
            frames.close()

    @torch.inference_mode()
    def generate(self, text: str, speaker: int, context: Sequence[Segment] = (), *,
                 session: Hashable | None = None, max_audio_secs: float = 15.0,
                 temperature: float = 0.9, topk: int = 50, seed: int | None = None,
                 num_codebooks: int | None = None) -> GeneratedChunk:
        """The whole utterance at once: every frame generated, then one (non-streaming)
        decode. The path streaming is measured against."""
        sampling = self._sampling(temperature, topk, num_codebooks, seed)
        frames = list(self._start(text, speaker, context, session, max_audio_secs, sampling,
                                  None))
        if frames:
            return self._decode(frames, self.codec.decode, sampling.num_codebooks)
        return GeneratedChunk(audio=torch.zeros(0),
                              codes=torch.zeros(self.num_codebooks, 0, dtype=torch.long))

    def forget(self, session: Hashable) -> None:
        """The conversation has ended: free its cache row."""
        with self._lock:
            self._first_segment.pop(session, None)
        self.frames.forget(session)

    def close(self) -> None:
        self.frames.close()

    def _sampling(self, temperature: float, topk: int, num_codebooks: int | None,
                  seed: int | None) -> Sampling:
        """The sampling options (the frame batcher checks them)."""
        wanted = self.num_codebooks if num_codebooks is None else num_codebooks
        return Sampling(temperature=temperature, topk=topk, num_codebooks=wanted, seed=seed)

    def _start(self, text, speaker, context, session, max_audio_secs, sampling, on_plan):
        with self._lock:
            keep_from = None if session is None else self._first_segment.get(session)
        plan = self.plan(text, speaker, context, max_audio_secs, keep_from=keep_from,
                         cut_back=session is not None)
        if session is not None:
            with self._lock:
                if plan.first_segment is None:
                    self._first_segment.pop(session, None)
                else:
                    self._first_segment[session] = plan.first_segment
        if on_plan is not None:
            on_plan(plan)
        return self.frames.generate(session, plan.tokens, plan.mask, plan.max_frames, sampling)

    def _decode(self, frames: list[torch.Tensor], decode, wanted: int) -> GeneratedChunk:
        """Audio of ``frames`` (each (N,)), decoded from their first ``wanted`` codebooks."""
        made = torch.stack(frames, dim=1)  # (N, n)
        # Ids past the codec's codebook (the model's vocabulary has a few more) never come
        # from a trained model; random test weights can pick them. They decode as 0, but the
        # chunk keeps the frames as made: that is what the model's cache holds, so a context
        # segment built from them continues it.
        codes = made[:wanted].masked_fill(made[:wanted] >= self.codec.codebook_size, 0)
        audio = decode(codes.to(self.codec.device))
        return GeneratedChunk(audio=audio.float().cpu(), codes=made)


def _frames_key(frames: tuple[torch.Tensor, torch.Tensor]) -> bytes:
    tokens, mask = frames
    return hashlib.sha1(tokens.numpy().tobytes() + mask.numpy().tobytes()).digest()
