"""The interface every speech engine implements, and what it may condition on.

An engine turns one piece of reply text (a sentence or clause) into 16-bit mono PCM,
yielded in chunks as soon as they exist so playback can start early. It is loaded once
per process and shared by all sessions, so it keeps no per-conversation state: whatever
it may condition on arrives in a SpeechContext with every call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np


class EngineUnavailableError(RuntimeError):
    """A speech engine cannot start here as configured (no GPU, weights not found, ...);
    the message says why and what to do."""


@dataclass(frozen=True)
class SpokenAudio:
    """A stretch of speech with its words: mono int16 samples at ``sample_rate``.
    ``codes``: for speech an engine made, what it made it from in its own terms (MisoTTS:
    its Mimi codes), so that when the utterance comes back as context it is not encoded
    again; None for the user's speech."""

    samples: np.ndarray
    sample_rate: int
    text: str
    codes: object | None = field(default=None, repr=False, compare=False)

    @property
    def duration_secs(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class Utterance:
    """Something said in the conversation, by ``"user"`` or ``"bot"``."""

    speaker: str
    audio: SpokenAudio


@dataclass(frozen=True)
class SpeakingStyle:
    """How to speak the reply, relative to the voice's own neutral delivery.

    ``rate`` > 1 speaks faster; ``loudness_db`` and ``pitch_semitones`` shift level and
    register; ``expressiveness`` > 1 varies the delivery more. Engines that hear the user
    themselves (MisoTTS) may ignore it."""

    rate: float = 1.0
    loudness_db: float = 0.0
    pitch_semitones: float = 0.0
    expressiveness: float = 1.0


NEUTRAL_STYLE = SpeakingStyle()


def without_leading_silence(
    samples: np.ndarray, sample_rate: int, *, level: int = 100, keep_secs: float = 0.01
) -> np.ndarray:
    """int16 ``samples`` from ``keep_secs`` before the first one above ``level``: Piper
    opens every sentence with 35-60 ms of silence, which the user waits through in
    silence when it opens a reply. All of it if nothing is that loud."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > level)
    if not len(loud):
        return samples
    return samples[max(0, loud[0] - int(keep_secs * sample_rate)) :]


@dataclass(frozen=True)
class SpeechContext:
    """What an engine may listen to before it speaks.

    ``conversation`` is the call so far, oldest first: the user's turns as captured by the
    pipeline (never audio from while the bot was speaking) and the bot's utterances,
    including the sentences of the current reply already spoken. Empty before the first
    turn.
    """

    conversation: tuple[Utterance, ...] = field(default_factory=tuple)
    # Which conversation this is: an engine may keep what it has read of it (MisoTTS keeps
    # it in its model's cache) until ``SpeechEngine.forget``. None: a one-off.
    session_id: str | None = None
    # How the reply should sound, following how the user sounded (agent.tone.follow).
    style: SpeakingStyle = NEUTRAL_STYLE

    @property
    def user_turn(self) -> SpokenAudio | None:
        """The user's speech of the turn being answered (the latest user utterance)."""
        for utterance in reversed(self.conversation):
            if utterance.speaker == "user":
                return utterance.audio
        return None

    @property
    def bot_replies(self) -> tuple[SpokenAudio, ...]:
        return tuple(u.audio for u in self.conversation if u.speaker == "bot")


class SpeechEngine(ABC):
    """A text-to-speech model: loaded once, then called from any thread."""

    #: Rate of the PCM that ``synthesize`` yields.
    sample_rate: int

    @abstractmethod
    def synthesize(self, text: str, context: SpeechContext) -> Generator[np.ndarray, None, object]:
        """Yield int16 mono chunks speaking ``text``; raise ValueError for unusable text.
        The generator may return the engine's own form of what it said (SpokenAudio.codes),
        which comes back with the utterance in later contexts."""

    def synthesize_all(self, text: str, sample_rate: int | None = None) -> np.ndarray:
        """The whole of ``text`` spoken with no context, as int16 at ``sample_rate``
        (the engine's own rate by default): for making test and benchmark speech."""
        audio = np.concatenate(list(self.synthesize(text, SpeechContext())))
        if sample_rate is None or sample_rate == self.sample_rate:
            return audio
        import soxr

        audio = soxr.resample(audio.astype(np.float32) / 32768, self.sample_rate, sample_rate)
        return (np.clip(audio, -1, 1) * 32767).astype(np.int16)

    def forget(self, session_id: str) -> None:
        """The conversation has ended: drop whatever was kept for it. Engines that keep
        nothing between calls need do nothing."""

    def warm_up(self) -> None:
        """Run once at start so the first real reply does not pay for lazy initialisation."""
        for _ in self.synthesize("Hello.", SpeechContext()):
            pass
