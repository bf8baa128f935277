"""Speech to text as a Pipecat segmented STT service, over one faster-whisper model
shared by every session (agent/asr/whisper.py).

Built on Pipecat's public SegmentedSTTService contract (``run_stt`` on raw PCM segments,
``language_to_service_language``), the way its own WhisperSTTService is, so nothing of
that service's internals (its model loading) is leaned on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from concurrent.futures import Future

import numpy as np
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.services.whisper.stt import WhisperSTTSettings, language_to_whisper_language
from pipecat.transcriptions.language import Language
from pipecat.utils.string import TextPartForConcatenation, concatenate_aggregated_text
from pipecat.utils.time import time_now_iso8601

from agent.asr.speech_end import SpeechEndWatch
from agent.asr.whisper import MIN_WINDOW_SECS, ShortUtteranceWhisper, meaningless
from pipelines.turns.record import EarlyTranscriptFrame

# Silence Pipecat's segmented STT appends to each segment (its default, set explicitly
# because early transcription must add the same).
TRAILING_SILENCE_SECS = 0.5


class SharedWhisperSTTService(SegmentedSTTService):
    """Whisper on each speech segment the VAD cuts, with the process's shared model.

    With ``early``, it starts transcribing when the user's voice drops to silence, a
    fifth of a second before the VAD (which waits ``stop_secs`` to be sure) reports the
    stop and Pipecat asks for the segment (agent/asr/whisper.py, ``transcribe_early``).
    The words are sent on at once, with the turn's earlier segments, in an
    EarlyTranscriptFrame: the LLM reads its prompt ahead with them while the turn's end
    is still being decided.
    """

    Settings = WhisperSTTSettings
    _settings: WhisperSTTSettings

    def __init__(
        self,
        *,
        model,
        beam_size: int = 1,
        utterance_window: bool = True,
        min_window_secs: float = MIN_WINDOW_SECS,
        early: bool = True,
        filler_prompt: str | None = None,
        settings: WhisperSTTSettings,
        **kwargs,
    ):
        # Pipecat's own Whisper defaults, with the given settings over them.
        merged = WhisperSTTSettings(
            model=None, language=Language.EN, no_speech_prob=0.4, hotwords=None, initial_prompt=None
        )
        merged.apply_update(settings)
        super().__init__(trailing_silence_secs=TRAILING_SILENCE_SECS, settings=merged, **kwargs)
        self._whisper = ShortUtteranceWhisper(
            model,
            beam_size=beam_size,
            utterance_window=utterance_window,
            min_window_secs=min_window_secs,
            filler_prompt=filler_prompt,
        )
        self._onset = SpeechEndWatch() if early else None
        self._turn_words: list[str] = []  # the transcripts of the user's turn so far

    @property
    def wants_wav_segments(self) -> bool:
        return False  # the model reads raw 16-bit PCM

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        return language_to_whisper_language(language)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if self._onset is not None:
            if isinstance(frame, VADUserStartedSpeakingFrame):
                self._onset.speech_started()
            elif isinstance(frame, VADUserStoppedSpeakingFrame):
                self._onset.speech_stopped()
        if isinstance(frame, UserStartedSpeakingFrame):  # the user aggregator's, upstream
            self._turn_words = []
        await super().process_frame(frame, direction)

    async def process_audio_frame(self, frame: InputAudioRawFrame, direction: FrameDirection):
        await super().process_audio_frame(frame, direction)
        if self._onset is not None and self._onset.add(frame.audio, self.sample_rate):
            # The same audio Pipecat's segmented STT will send (it keeps 1 s before the
            # VAD start), with the silence it pads segments with.
            speech = self._onset.segment().astype(np.float32) / 32768
            trailing = np.zeros(int(self.sample_rate * TRAILING_SILENCE_SECS), np.float32)
            early = self._whisper.transcribe_early(speech, trailing, self.settings.language)
            if early is not None:
                self.create_task(
                    self._send_early(early, len(speech) / self.sample_rate), name="early"
                )

    async def _send_early(self, early: Future, secs: float):
        """The early transcription's words with the turn's earlier ones, once it is done."""
        try:
            utterance = await asyncio.wrap_future(early)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise  # the session is closing
            return  # superseded by later speech before it began
        except Exception:  # failed: no guess (the turn's own request will say why)
            return
        words = self._spoken([utterance], secs)
        if words:
            parts = self._turn_words + [words]
            await self.push_frame(EarlyTranscriptFrame(text=_as_written(parts)))

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        """One segment's words (16-bit PCM), without those Whisper thinks are not speech."""
        await self.start_processing_metrics()
        samples = np.frombuffer(audio, dtype=np.int16).astype(np.float32) / 32768.0
        language = self.settings.language
        try:
            segments, _ = await asyncio.to_thread(
                lambda: _consumed(self._whisper.transcribe(samples, language=language))
            )
        except Exception as e:  # one failed segment is reported, the call goes on
            await self.stop_processing_metrics()
            yield ErrorFrame(error=f"speech recognition failed: {e}")
            return
        text = self._spoken(segments)
        await self.stop_processing_metrics()
        if text:
            self._turn_words.append(text)
            yield TranscriptionFrame(text, "", time_now_iso8601(), language)

    def _spoken(self, segments, secs: float | None = None) -> str:
        """The words of the segments Whisper thinks are speech (and, given the audio's
        length, that are words someone said: see ``meaningless``)."""
        threshold = self.settings.no_speech_prob
        text = "".join(
            f"{s.text} " for s in segments if threshold is None or s.no_speech_prob < threshold
        )
        if secs is not None and meaningless(text, secs):
            return ""
        return text


def _as_written(transcripts: list[str]) -> str:
    """A turn's transcripts as Pipecat's user aggregator writes them to the context."""
    return concatenate_aggregated_text(
        [TextPartForConcatenation(t, includes_inter_part_spaces=False) for t in transcripts]
    )


def _consumed(result):
    """faster-whisper's segments are a lazy generator: decode them on this thread."""
    segments, info = result
    return list(segments), info
