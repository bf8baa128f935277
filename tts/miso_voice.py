"""MisoTTS as a SpeechEngine: the reply is spoken after the conversation so far.

Every call puts the dialogue into the model's context, oldest first: each user turn as
the user's speaker (the audio the pipeline captured, resampled to 24 kHz, with its
transcript), each bot utterance as the bot's speaker (its own generated audio and text),
and the optional voice prompt that fixes the bot's voice. The sentences of one reply are
spoken one call each; each call sees the sentences already spoken, so a reply keeps one
voice. The bot's own utterances are not encoded again: the codes they were decoded from
are returned with the speech and come back with the utterance (SpokenAudio.codes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tts.base import EngineUnavailableError, SpeechContext, SpeechEngine, SpokenAudio
from tts.miso.codec import MimiCodec
from tts.miso.generator import ContextPlan, MisoGenerator, Segment

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MisoOptions:
    """How to speak: sampling, limits and streaming granularity."""

    user_speaker: int = 0
    bot_speaker: int = 1
    temperature: float = 0.9
    topk: int = 50
    max_audio_secs: float = 15.0
    num_codebooks: int | None = None
    first_chunk_frames: int = 1
    chunk_frames: int = 4
    seed: int | None = None


def pick_device(device: str, allow_cpu: bool) -> torch.device:
    """``device`` if it exists here; a CUDA request on a machine without CUDA fails at start
    unless running on the CPU was explicitly allowed."""
    wanted = torch.device(device)
    if wanted.type == "cuda" and not torch.cuda.is_available():
        if not allow_cpu:
            build = torch.version.cuda and f"CUDA {torch.version.cuda} build" or "CPU-only build"
            raise EngineUnavailableError(
                f"MisoTTS is configured for {device}, but torch {torch.__version__} "
                f"({build}) sees no CUDA GPU. Use a CPU voice (configs/default.yaml), or allow "
                "the CPU explicitly (tts.miso.allow_cpu: true, or run_agent.py --allow-cpu): "
                "it works but is far slower than real time."
            )
        logger.warning("no CUDA GPU: MisoTTS runs on the CPU, far slower than real time")
        return torch.device("cpu")
    return wanted


def float_to_int16(audio: torch.Tensor) -> np.ndarray:
    return (audio.clamp(-1, 1).numpy() * 32767).astype(np.int16)


class MisoEngine(SpeechEngine):
    def __init__(self, generator: MisoGenerator, options: MisoOptions = MisoOptions()):
        self.generator = generator
        self.options = options
        self.sample_rate = generator.sample_rate
        # Called (from the synthesis thread) with the segments and plan of every utterance;
        # for logs and tests.
        self.context_observers: list[Callable[[Sequence[Segment], ContextPlan], None]] = []

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike,
        *,
        codec: str | os.PathLike = "kyutai/mimi",
        tokenizer: str | os.PathLike | None = None,
        text_format: str = "miso",
        device: str = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        allow_cpu: bool = False,
        voice_prompt: SpokenAudio | None = None,
        compile_decoder: bool = False,
        sessions: int = 1,
        options: MisoOptions = MisoOptions(),
    ) -> MisoEngine:
        """Model, codec and tokenizer from local paths (or hub ids when online).
        ``voice_prompt``: speech in the voice the bot should have, with its words.
        ``text_format``: "miso" writes a segment as "[0] text", "csm" (Sesame CSM) "[0]text".
        ``sessions``: conversations spoken for at once (one model cache row each).
        Anything that keeps it from starting is an EngineUnavailableError saying why."""
        from tts.miso.checkpoint import CheckpointError, load_model
        from tts.miso.codec import CodecNotFoundError
        from tts.miso.generator import ContextTooLongError
        from tts.miso.text import (
            CSM_SEGMENT_FORMAT,
            MISO_SEGMENT_FORMAT,
            TextTokenizer,
            TokenizerNotFoundError,
        )

        segment_format = {"miso": MISO_SEGMENT_FORMAT, "csm": CSM_SEGMENT_FORMAT}[text_format]

        where = pick_device(device, allow_cpu)
        try:
            model = load_model(checkpoint, device=where, dtype=dtype)
            if compile_decoder:
                model.compile_decoder_step()
            mimi = MimiCodec.load(codec, device=where,
                                  num_codebooks=model.config.audio_num_codebooks)
            generator = MisoGenerator(
                model, TextTokenizer.load(tokenizer, segment_format=segment_format), mimi,
                speakers=(options.user_speaker, options.bot_speaker), sessions=sessions,
            )
            engine = cls(generator, options)
            if voice_prompt is not None:
                generator.set_voice_prompt(engine.segment("bot", voice_prompt))
        except (CheckpointError, CodecNotFoundError, TokenizerNotFoundError,
                ContextTooLongError) as exc:
            raise EngineUnavailableError(f"MisoTTS cannot start: {exc}") from exc
        return engine

    # -- the conversation as segments ---------------------------------------------------

    def segments(self, context: SpeechContext) -> list[Segment]:
        return [
            self.segment(u.speaker, u.audio)
            for u in context.conversation
            # Turns with no audio or no words give the model nothing to follow.
            if len(u.audio.samples) and u.audio.text.strip()
        ]

    def segment(self, speaker: str, spoken: SpokenAudio) -> Segment:
        ids = {"user": self.options.user_speaker, "bot": self.options.bot_speaker}
        if speaker not in ids:
            raise ValueError(f"unknown speaker {speaker!r}; expected 'user' or 'bot'")
        return Segment(
            speaker=ids[speaker],
            text=spoken.text,
            audio=self._audio_at_codec_rate(spoken),
            sample_rate=self.sample_rate,
            codes=spoken.codes,
            codebooks=self.options.num_codebooks,  # what the remembered codes were made with
        )

    def _audio_at_codec_rate(self, spoken: SpokenAudio) -> torch.Tensor:
        if spoken.samples.ndim != 1:
            raise ValueError(f"captured audio must be mono, got shape {spoken.samples.shape}")
        audio = spoken.samples.astype(np.float32) / 32768.0
        if spoken.sample_rate != self.sample_rate:
            import soxr

            audio = soxr.resample(audio, spoken.sample_rate, self.sample_rate)
        return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))

    # -- speaking -----------------------------------------------------------------------

    def synthesize(self, text: str, context: SpeechContext) -> Generator[np.ndarray, None, object]:
        if not text.strip():
            raise ValueError("nothing to say: the text is empty")
        opts = self.options
        segments = self.segments(context)

        def observe(plan: ContextPlan) -> None:
            for observer in self.context_observers:
                observer(segments, plan)

        spoken: list[np.ndarray] = []
        codes: list[torch.Tensor] = []
        for chunk in self.generator.stream(
            text, opts.bot_speaker, segments, session=context.session_id, on_plan=observe,
            max_audio_secs=opts.max_audio_secs, temperature=opts.temperature, topk=opts.topk,
            seed=opts.seed, num_codebooks=opts.num_codebooks,
            first_chunk_frames=opts.first_chunk_frames, chunk_frames=opts.chunk_frames,
        ):
            pcm = float_to_int16(chunk.audio)
            spoken.append(pcm)
            codes.append(chunk.codes)
            yield pcm
        # The codes this speech was decoded from: when it comes back as context, it is
        # not encoded again.
        return torch.cat(codes, dim=1) if codes else None

    def forget(self, session_id: str) -> None:
        self.generator.forget(session_id)

    def warm_up(self) -> None:
        """One short utterance: allocates caches, compiles (if asked), loads kernels."""
        opts = self.options
        if opts.num_codebooks is not None:
            self.generator.frames.prepare(opts.num_codebooks)
        for _ in self.generator.stream("Hello.", opts.bot_speaker, (), max_audio_secs=0.16,
                                       num_codebooks=opts.num_codebooks):
            pass


def load(config) -> MisoEngine:
    """The MisoTTS (or CSM) voice of ``config.tts.miso`` (an AgentConfig), one cache row
    per session the server may hold."""
    from agent.audio import load_input_wav

    miso = config.tts.miso
    prompt = None
    if miso.voice_prompt is not None:
        samples, _ = load_input_wav(miso.voice_prompt.audio, 24_000)
        prompt = SpokenAudio(samples, 24_000, miso.voice_prompt.text)
    return MisoEngine.load(
        miso.checkpoint,
        codec=miso.codec,
        tokenizer=miso.tokenizer,
        text_format=miso.text_format,
        device=miso.device,
        dtype=getattr(torch, miso.dtype),
        allow_cpu=miso.allow_cpu,
        voice_prompt=prompt,
        compile_decoder=miso.compile_decoder,
        sessions=config.server.max_sessions,
        options=MisoOptions(
            user_speaker=miso.user_speaker,
            bot_speaker=miso.bot_speaker,
            temperature=miso.temperature,
            topk=miso.topk,
            max_audio_secs=miso.max_audio_secs,
            num_codebooks=miso.num_codebooks,
            first_chunk_frames=miso.first_chunk_frames,
            chunk_frames=miso.chunk_frames,
            seed=miso.seed,
        ),
    )
