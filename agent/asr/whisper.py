"""Whisper for short spoken turns: the encoder sized to the utterance, not to 30 seconds.

faster-whisper always pads the audio to Whisper's 30 s window, and on a CPU the encoder
over those 3000 mel frames is most of a short turn's recognition time (tiny.en, 2 cores:
310 ms of encoder for a 2 s question). CTranslate2's encoder accepts fewer frames, so a
turn is encoded over its own length plus a margin of silence, like whisper.cpp's
audio_ctx. Long audio falls back to faster-whisper's ordinary path. The object offers the
part of WhisperModel's API that Pipecat's Whisper service uses.

It can also start early: ``transcribe_early(speech)`` transcribes a turn's audio as soon
as the speech seems to have ended, on a thread of its own; when the request for the
segment comes (the VAD's stop, a fifth of a second later) and it is that same speech with
only silence after it, the early result answers it, so the words are ready about when the
VAD says the user stopped instead of a Whisper run later.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from loguru import logger

SAMPLE_RATE = 16000
FRAMES_PER_SECOND = 100
FULL_WINDOW_FRAMES = 3000
# Whisper was trained on 30 s windows. Below about 10 s tiny.en starts repeating itself
# (measured on 24 spoken questions: 5 s windows WER 0.56, 10 s windows 0.08 on Piper's
# voice and equal to the full window's on espeak's); 10 s costs 105 ms instead of 480.
MIN_WINDOW_SECS = 10.0
# The multilingual base, in a 10 s window, can stop after a turn's first word ("Please"
# for 3 s of "Please enter your password followed by the pound key."). So few words for
# that much speech (below this rate, over at least SHORT_SECS from the first sound to the
# last, the silence Pipecat pads a segment with left out) is heard again over the full
# window. Every turn of the human and everyday sets read at 1.0 word/s or more of their
# clips, silence and all, except those cut short (0.3-0.56).
ENDED_EARLY_WORDS_PER_SEC = 0.8
SHORT_SECS = 1.5
MARGIN_FRAMES = 100
# Roughly the most tokens anyone speaks per second, to bound decoding of a short window.
MAX_TOKENS_PER_SECOND = 8
# Audio after the early-transcribed speech counts as silence below this RMS, or below
# this fraction of the speech's own RMS (float samples, full scale 1.0).
SILENCE_RMS = 0.004
SILENCE_FRACTION = 0.15


@dataclass(frozen=True)
class Utterance:
    """One recognised stretch of speech, shaped like faster-whisper's Segment where it matters."""

    text: str
    no_speech_prob: float
    avg_logprob: float


class ShortUtteranceWhisper:
    """Transcribes one turn greedily, without timestamps (a turn needs neither beams nor times).

    ``utterance_window=False`` keeps Whisper's full 30 s window for every turn.
    """

    def __init__(
        self,
        model,
        *,
        beam_size: int = 1,
        utterance_window: bool = True,
        max_short_secs: float = 20.0,
        min_window_secs: float = MIN_WINDOW_SECS,
        filler_prompt: str | None = None,
    ):
        self._model = model
        self._min_window_frames = int(min_window_secs * FRAMES_PER_SECOND)
        self._beam_size = beam_size
        # Text Whisper takes as what came before. Written with fillers ("um", "uh"), it
        # makes Whisper keep the user's fillers instead of tidying them away, and a turn
        # that pauses on "um" reads as unfinished (pipelines/turns/turn_end.py).
        self._filler_prompt = filler_prompt
        self._max_short_secs = max_short_secs if utterance_window else 0.0
        self._early: tuple[np.ndarray, str | None, Future] | None = None
        self._early_lock = threading.Lock()
        self._early_pool: ThreadPoolExecutor | None = None
        self.early_hits = 0  # requests answered by an early transcription

    def transcribe_early(
        self, speech: np.ndarray, trailing: np.ndarray, language: str | None
    ) -> Future | None:
        """Start transcribing ``speech`` + ``trailing`` (the silence the caller will pad the
        segment with) now, for a request that may follow with only silence added. Returns
        the transcription to come (an Utterance; cancelled if superseded before it began),
        or None for speech too long to transcribe early."""
        if len(speech) / SAMPLE_RATE >= self._max_short_secs:
            return None
        with self._early_lock:
            if self._early_pool is None:
                self._early_pool = ThreadPoolExecutor(1, thread_name_prefix="whisper-early")
            if self._early is not None:
                # Superseded (the voice came back and fell silent again): if it has not
                # started, it never will, so the latest speech is transcribed next.
                self._early[2].cancel()
            audio = np.concatenate([speech, trailing])
            future = self._early_pool.submit(self._transcribe_short, audio, language, None)
            self._early = (speech, language, future)
        return future

    def _early_result(self, audio: np.ndarray, language: str | None) -> Utterance | None:
        """The early transcription of ``audio`` if it is the early speech + silence."""
        with self._early_lock:
            early, self._early = self._early, None
        if early is None:
            return None
        speech, early_language, future = early
        n = len(speech)
        if early_language != language or len(audio) < n or not np.array_equal(audio[:n], speech):
            logger.debug("early transcription not used: other audio")
            return None
        tail = audio[n:]
        if len(tail):
            tail_rms = float(np.sqrt(np.mean(tail**2)))
            speech_rms = float(np.sqrt(np.mean(speech**2))) if n else 0.0
            if tail_rms > max(SILENCE_RMS, SILENCE_FRACTION * speech_rms):
                logger.debug(
                    f"early transcription not used: {len(tail) / SAMPLE_RATE:.2f} s after it "
                    f"not silent (RMS {tail_rms:.4f}, speech {speech_rms:.4f})"
                )
                return None  # more speech came after it
        ready = future.done()
        try:
            result = future.result()
        except Exception:
            return None
        self.early_hits += 1
        logger.debug(f"early transcription used ({'ready' if ready else 'waited for it'})")
        return result

    @property
    def supported_languages(self):
        return self._model.supported_languages

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        hotwords=None,
        initial_prompt=None,
        **options,
    ):
        """Return ``([Utterance], None)`` for a short turn, else faster-whisper's segments;
        none when the words cannot be what a person said to the bot (``meaningless``)."""
        segments, info = self._transcribe(audio, language, hotwords, initial_prompt, **options)
        segments = list(segments)
        reason = meaningless(" ".join(s.text for s in segments), len(audio) / SAMPLE_RATE)
        if reason:
            logger.info(f"not answered: {reason}")
            return [], info
        return segments, info

    def _transcribe(self, audio, language, hotwords, initial_prompt, **options):
        if not hotwords and not initial_prompt:
            early = self._early_result(audio, language)
            if early is not None:
                return [early], None
        if len(audio) / SAMPLE_RATE >= self._max_short_secs or initial_prompt:
            return self._model.transcribe(
                audio,
                language=language,
                hotwords=hotwords,
                initial_prompt=initial_prompt,
                beam_size=self._beam_size,
                without_timestamps=True,
                condition_on_previous_text=False,
                **options,
            )
        return [self._transcribe_short(audio, language, hotwords)], None

    def _transcribe_short(self, audio: np.ndarray, language: str | None, hotwords) -> Utterance:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        model = self._model
        features = model.feature_extractor(audio)
        speech_frames = min(features.shape[-1], FULL_WINDOW_FRAMES - MARGIN_FRAMES)
        window = max(self._min_window_frames, speech_frames + MARGIN_FRAMES)
        window = int(np.ceil(window / 100) * 100)  # whole seconds: fewer distinct shapes
        encoded = model.encode(pad_or_trim(features[..., :speech_frames], window))

        tokenizer = Tokenizer(
            model.hf_tokenizer,
            model.model.is_multilingual,
            task="transcribe",
            language=language or "en",
        )
        previous = tokenizer.encode(" " + self._filler_prompt) if self._filler_prompt else []
        utterance = self._decode(model, tokenizer, encoded, previous, hotwords, len(audio))
        if previous and repeats_itself(utterance.text):
            # A prompt can send Whisper into a loop ("Um, um, um, um, ..."): without it.
            utterance = self._decode(model, tokenizer, encoded, [], hotwords, len(audio))
        if window < FULL_WINDOW_FRAMES and ended_early(utterance.text, sounding_secs(audio)):
            encoded = model.encode(pad_or_trim(features[..., :speech_frames], FULL_WINDOW_FRAMES))
            whole = self._decode(model, tokenizer, encoded, previous, hotwords, len(audio))
            if len(whole.text.split()) > len(utterance.text.split()):
                logger.debug(
                    f"Whisper ended early ({utterance.text!r}); the full window: {whole.text!r}"
                )
                utterance = whole
        return utterance

    def _decode(self, model, tokenizer, encoded, previous, hotwords, samples: int) -> Utterance:
        from faster_whisper.transcribe import get_suppressed_tokens

        prompt = model.get_prompt(tokenizer, previous, without_timestamps=True, hotwords=hotwords)
        max_tokens = int(MAX_TOKENS_PER_SECOND * samples / SAMPLE_RATE) + 10
        result = model.model.generate(
            encoded,
            [prompt],
            beam_size=self._beam_size,
            max_length=min(len(prompt) + max_tokens, 448),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        )[0]
        tokens = result.sequences_ids[0]
        return Utterance(
            text=tokenizer.decode(tokens).strip(),
            no_speech_prob=float(result.no_speech_prob),
            avg_logprob=float(result.scores[0]) / (len(tokens) + 1),
        )


# A stretch the VAD heard as one segment (no pause of even stop_secs) that gives fewer
# words than this per second is not someone talking: babble, music, a hum. 120 s of crowd
# babble came out as "Thank you." and was answered.
MIN_WORDS_PER_SEC = 0.4
LONG_SEGMENT_SECS = 6.0


def sounding_secs(audio: np.ndarray) -> float:
    """Seconds from the first 20 ms frame with sound in it to the last: louder than
    SILENCE_RMS and SILENCE_FRACTION of the loudest frame."""
    frame = SAMPLE_RATE // 50
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    if not len(frames):
        return 0.0
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.flatnonzero(rms > max(SILENCE_RMS, SILENCE_FRACTION * float(rms.max())))
    return (loud[-1] - loud[0] + 1) * frame / SAMPLE_RATE if len(loud) else 0.0


def ended_early(text: str, secs: float) -> bool:
    """Whether ``text`` is too few words for ``secs`` of a turn's speech: Whisper stopped
    before the speech did."""
    return secs >= SHORT_SECS and len(text.split()) < ENDED_EARLY_WORDS_PER_SEC * secs


def meaningless(text: str, secs: float) -> str | None:
    """Why Whisper's ``text`` for ``secs`` of audio is not a turn to answer, or None:
    far too few words for a long stretch of sound, or a phrase Whisper loops on (three
    words or more said three times in a row, "what is the what is the what is the")."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    if words and secs >= LONG_SEGMENT_SECS and len(words) / secs < MIN_WORDS_PER_SEC:
        return f"{secs:.0f} s of sound gave only {text.strip()!r} (babble, music or noise)"
    for size in range(3, 9):
        for start in range(len(words) - size * 3 + 1):
            phrase = words[start : start + size]
            if all(words[start + k * size : start + (k + 1) * size] == phrase for k in range(3)):
                return f"Whisper looped on {' '.join(phrase)!r}: {text.strip()[:80]!r}"
    return None


def repeats_itself(text: str) -> bool:
    """Whether ``text`` loops the way Whisper does and people hardly do: a word or two said
    four times in a row ("um, um, um, um"), or a phrase of three to eight words said twice
    in a row ("and that should be good. and that should be good."). A false alarm only
    costs a second decoding."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    for size in range(1, 9):
        times = 4 if size <= 2 else 2
        for start in range(len(words) - size * times + 1):
            phrase = words[start : start + size]
            if all(
                words[start + k * size : start + (k + 1) * size] == phrase for k in range(times)
            ):
                return True
    return False
