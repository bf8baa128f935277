"""Speech from a MisoTTS model: context segments in, audio chunks out as frames are made.

The model reads one sequence of at most ``max_seq_len`` (2048) positions: the context
segments, each its text (``[speaker] text`` with BOS/EOS, one position per token) then its
audio (one position per 80 ms Mimi frame, then one all-zero end-of-audio frame), then the
text to speak, then the frames being generated. Whatever does not fit is dropped oldest
segment first; a voice-prompt segment, which fixes the bot's voice, is never dropped.

Generation stops at an all-zero frame or at the duration limit. Frames are decoded by a
streaming Mimi decoder in chunks, so the first audio is out after ``first_chunk_frames``
frames rather than after the whole utterance.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from tts.miso.codec import MimiCodec
from tts.miso.model import MisoModel
from tts.miso.text import TextTokenizer

FRAME_SECS = 0.08


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


@dataclass(frozen=True)
class GeneratedChunk:
    """Audio (1-D float at the codec's rate) and the frames (num_codebooks, n) it decodes."""

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


class ContextTooLongError(ValueError):
    """The text to speak (with the voice prompt) leaves no room to generate audio."""


class MisoGenerator:
    """Tokenizes, keeps the 2048-position budget and streams audio. One utterance at a
    time (the model's caches are shared); calls from several threads queue up."""

    def __init__(
        self,
        model: MisoModel,
        text_tokenizer: TextTokenizer,
        codec: MimiCodec,
        voice_prompt: Segment | None = None,
        speakers: Sequence[int] | None = None,
        encoded_cache_size: int = 32,
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
        model.setup_caches(1)
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
        codes = self._encoded.get(key)
        if codes is None:
            codes = self.codec.encode(audio).to("cpu")  # validates shape, emptiness, NaN
            self._encoded[key] = codes
            while len(self._encoded) > self._encoded_cache_size:
                self._encoded.popitem(last=False)
        else:
            self._encoded.move_to_end(key)
        return codes

    def tokenize_audio(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames+1, N+1): one position per frame, then the all-zero end-of-audio frame."""
        frames = codes.shape[1]
        tokens = torch.zeros(frames + 1, self.num_codebooks + 1, dtype=torch.long)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        tokens[:frames, :-1] = codes.T
        mask[:, :-1] = True
        return tokens, mask

    def tokenize_segment(self, segment: Segment) -> tuple[torch.Tensor, torch.Tensor]:
        text_tokens, text_mask = self.tokenize_text(segment.text, segment.speaker)
        audio_tokens, audio_mask = self.tokenize_audio(self.audio_codes(segment))
        return torch.cat([text_tokens, audio_tokens]), torch.cat([text_mask, audio_mask])

    # -- the context budget --------------------------------------------------------------

    def plan(self, text: str, speaker: int, context: Sequence[Segment],
             max_audio_secs: float) -> ContextPlan:
        """The prompt for speaking ``text``: as many of the newest ``context`` segments as
        fit beside the voice prompt, the text, and room for ``max_audio_secs`` of audio.

        Positions: prompt + generated frames <= max_seq_len (each generated frame is fed
        back at the next position; the frame after the last one is never needed)."""
        max_frames = max(1, int(max_audio_secs / FRAME_SECS))
        gen_tokens, gen_mask = self.tokenize_text(text, speaker)
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
        # Newest first, keep while they fit; stop at the first that does not, so the kept
        # ones are a contiguous, most recent run.
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        for segment in reversed(context):
            frames = self.tokenize_segment(segment)
            if frames[0].shape[0] > budget:
                break
            budget -= frames[0].shape[0]
            kept.append(frames)
        kept.reverse()
        parts = fixed + kept + [(gen_tokens, gen_mask)]
        return ContextPlan(
            tokens=torch.cat([t for t, _ in parts]),
            mask=torch.cat([m for _, m in parts]),
            kept_segments=len(kept),
            dropped_segments=len(context) - len(kept),
            max_frames=max_frames,
        )

    # -- generating ----------------------------------------------------------------------

    @torch.inference_mode()
    def stream(
        self,
        text: str,
        speaker: int,
        context: Sequence[Segment] = (),
        *,
        max_audio_secs: float = 15.0,
        temperature: float = 0.9,
        topk: int = 50,
        seed: int | None = None,
        num_codebooks: int | None = None,
        first_chunk_frames: int = 1,
        chunk_frames: int = 4,
    ) -> Iterator[GeneratedChunk]:
        """Speak ``text`` as ``speaker`` after ``context``, yielding audio as it is made.

        ``num_codebooks`` < N generates and decodes only the first codebooks (faster,
        coarser). ``seed`` makes a run reproducible. The end-of-speech check needs the
        frames on the host, so it happens once per chunk, not once per frame."""
        if first_chunk_frames < 1 or chunk_frames < 1:
            raise ValueError("chunk sizes must be at least one frame")
        wanted = self._checked_options(temperature, topk, num_codebooks)
        with self._lock:
            plan = self.plan(text, speaker, context, max_audio_secs)
            yield from self._frames_to_audio(plan, temperature, topk, seed, wanted,
                                             first_chunk_frames, chunk_frames,
                                             self.codec.streaming_decoder().decode)

    def _checked_options(self, temperature: float, topk: int, num_codebooks: int | None) -> int:
        """Validated sampling options; the number of codebooks to generate."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        wanted = self.num_codebooks if num_codebooks is None else num_codebooks
        if not 1 <= wanted <= self.num_codebooks:
            raise ValueError(f"num_codebooks must be in 1..{self.num_codebooks}, got {wanted}")
        return wanted

    def _frames_to_audio(self, plan, temperature, topk, seed, wanted, first_chunk, chunk,
                         decode):
        model, device = self.model, self.device
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        model.reset_caches()
        tokens = plan.tokens[None].to(device)
        mask = plan.mask[None].to(device)
        pos = torch.arange(plan.tokens.shape[0], device=device)[None]
        # A generated frame is fed back with its sampled codebooks visible, text hidden.
        feedback_mask = torch.zeros(1, 1, self.num_codebooks + 1, dtype=torch.bool,
                                    device=device)
        feedback_mask[..., :wanted] = True
        text_column = torch.zeros(1, 1, dtype=torch.long, device=device)

        pending: list[torch.Tensor] = []
        target = first_chunk
        for _ in range(plan.max_frames):
            frame = model.generate_frame(tokens, mask, pos, temperature, topk,
                                         generator=generator, num_codebooks=wanted)
            pending.append(frame)
            tokens = torch.cat([frame, text_column], dim=1).unsqueeze(1).long()
            mask = feedback_mask
            pos = pos[:, -1:] + 1
            if len(pending) == target:
                done, chunk_out = self._decode_pending(pending, decode, wanted)
                pending, target = [], chunk
                if chunk_out is not None:
                    yield chunk_out
                if done:
                    return
        if pending:
            _, chunk_out = self._decode_pending(pending, decode, wanted)
            if chunk_out is not None:
                yield chunk_out

    def _decode_pending(self, pending, decode, wanted) -> tuple[bool, GeneratedChunk | None]:
        """Decode the frames before the first all-zero (end) frame; True if it was seen."""
        frames = torch.cat(pending).to("cpu")  # (n, N): the one host sync per chunk
        is_end = (frames == 0).all(dim=1)
        ended = bool(is_end.any())
        if ended:
            frames = frames[: int(is_end.int().argmax())]
        if frames.shape[0] == 0:
            return ended, None
        codes = frames.T[:wanted].long()
        # Ids past the codec's codebook (the model's vocabulary has a few more) never come
        # from a trained model; random test weights can pick them.
        codes = codes.masked_fill(codes >= self.codec.codebook_size, 0)
        audio = decode(codes.to(self.codec.device))
        full = torch.zeros(self.num_codebooks, codes.shape[1], dtype=torch.long)
        full[:wanted] = codes
        return ended, GeneratedChunk(audio=audio.float().cpu(), codes=full)

    @torch.inference_mode()
    def generate(self, text: str, speaker: int, context: Sequence[Segment] = (), *,
                 max_audio_secs: float = 15.0, temperature: float = 0.9, topk: int = 50,
                 seed: int | None = None, num_codebooks: int | None = None) -> GeneratedChunk:
        """The whole utterance at once: every frame generated, then one (non-streaming)
        decode. The path streaming is measured against."""
        wanted = self._checked_options(temperature, topk, num_codebooks)
        everything = 1 << 30
        with self._lock:
            plan = self.plan(text, speaker, context, max_audio_secs)
            chunks = list(self._frames_to_audio(plan, temperature, topk, seed, wanted,
                                                everything, everything, self.codec.decode))
        if chunks:
            return chunks[0]
        return GeneratedChunk(audio=torch.zeros(0),
                              codes=torch.zeros(self.num_codebooks, 0, dtype=torch.long))
