"""Half-duplex with take-back, end to end in file mode (real Silero, Whisper, a small LLM,
Piper): until the reply's first audio plays, a user who goes on speaking takes the turn
back, the reply in progress is dropped unspoken and the turn is answered whole; once the
reply plays, the user's audio is dropped until it has played.

Whether the user speaks on before the first audio is a race between the pause and the
bot's speed. To decide it, the voice here is the real Piper voice held back a fixed time
before each phrase (a slow voice, as MisoTTS on a small GPU would be): a pause much
shorter than the hold is always taken back, speech during the reply always dropped.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from agent.audio import write_wav
from pipelines.local.file_mode import FileTurn, run_files
from tests.conftest import BARGE_IN, speak, wer
from tts.base import SpeechEngine

HOLD_SECS = 1.5
PAUSE_SECS = 0.5
FIRST, REST = "My big dog ran away.", "He chewed up my old red shoes first."


class HeldVoice(SpeechEngine):
    """``voice``, each phrase held back ``hold_secs`` before its first sound."""

    def __init__(self, voice: SpeechEngine, hold_secs: float):
        self._voice = voice
        self._hold_secs = hold_secs
        self.sample_rate = voice.sample_rate

    def synthesize(self, text, context):
        time.sleep(self._hold_secs)  # on the TTS's own thread
        return (yield from self._voice.synthesize(text, context))

    def warm_up(self):
        pass


@pytest.fixture(scope="module")
def held_stack(stack):
    return dataclasses.replace(stack, speech=HeldVoice(stack.speech, HOLD_SECS))


@pytest.fixture(scope="module")
def paused_turn(stack, tmp_path_factory):
    """One turn in two sentences with a pause between: the first reads finished, so the
    turn ends in the pause and a reply is on its way when the second begins."""
    pause = np.zeros(int(PAUSE_SECS * 16000), np.int16)
    samples = np.concatenate([speak(stack, FIRST), pause, speak(stack, REST)])
    return write_wav(tmp_path_factory.mktemp("paused") / "paused.wav", samples, 16000)


def _user_messages(result) -> list[str]:
    return [m["content"] for m in result.session.context.get_messages() if m["role"] == "user"]


async def test_a_user_who_goes_on_before_the_reply_plays_is_heard_whole(held_stack, paused_turn):
    result = await run_files(held_stack, [FileTurn(paused_turn)])

    # One turn, heard whole, answered once: the reply to its first part was dropped.
    (turn,) = result.turns
    assert wer(f"{FIRST} {REST}", turn["transcript"]) <= 0.2, turn
    assert turn["reply"].strip(), turn
    (record,) = result.session.timeline.turns
    assert record.user.id == 1 and record.user.parts == 2
    # The voice heard the whole turn (both parts' audio) and the reply, nothing else.
    (captured,) = result.session.user_turns
    assert captured.duration_secs > len(speak(held_stack, FIRST)) / 16000 + 1.0
    speakers = [u.speaker for u in result.session.dialogue]
    assert speakers[0] == "user" and speakers.count("user") == 1, speakers
    # The context holds the two parts as the aggregator wrote them, and nothing of the
    # dropped reply between them; the prompt reads them as one message.
    users = _user_messages(result)
    assert len(users) == 2, users
    assert wer(FIRST, users[0]) <= 0.2 and wer(REST, users[1]) <= 0.2, users
    roles = [m["role"] for m in result.session.context.get_messages()]
    assert roles[-3:] == ["user", "user", "assistant"], roles


async def test_speech_once_the_reply_plays_is_never_heard(held_stack, question_wavs):
    barge_in = speak(held_stack, BARGE_IN)
    (q1, text1), (q2, text2) = question_wavs[0], question_wavs[1]
    turns = [
        FileTurn(q1, during_reply=barge_in, during_reply_when="speaking"),
        FileTurn(q2),
    ]
    result = await run_files(held_stack, turns)

    users = _user_messages(result)
    assert len(users) == 2, users
    assert wer(text1, users[0]) <= 0.2 and wer(text2, users[1]) <= 0.2, users
    assert not any("banana" in t.text.lower() for t in result.session.user_turns)
    # All of the barge-in audio was dropped at the gate, before speech recognition.
    assert result.dropped_input_secs >= len(barge_in) / 16000 - 0.1
    assert all(t["reply"].strip() for t in result.turns), result.turns
