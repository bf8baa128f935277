"""The early transcript: the user's words as soon as their voice falls silent, sent on by
the STT (real Whisper) before the turn is known to have ended, and read ahead by the LLM
(real model) so that the turn's reply, if those were its words, has nothing left to read."""

from __future__ import annotations

import numpy as np
from pipecat.frames.frames import (
    InputAudioRawFrame,
    LLMContextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.string import TextPartForConcatenation, concatenate_aggregated_text

from pipelines.services.stt import SharedWhisperSTTService
from pipelines.turns.record import EarlyTranscriptFrame
from tests.conftest import speak

RATE = 16000


def _frames(samples: np.ndarray) -> list[InputAudioRawFrame]:
    step = RATE // 50  # 20 ms, as the transports send
    return [
        InputAudioRawFrame(audio=samples[i : i + step].tobytes(), sample_rate=RATE, num_channels=1)
        for i in range(0, len(samples), step)
    ]


def _segment(stack, text: str) -> list:
    """One stretch of speech as the VAD reports it: its start, the voice, the silence in
    which the voice is heard to stop, and the VAD's stop a moment later (as in a call, it
    waits ``stop_secs``; here long enough for the early transcription to be done)."""
    return [
        VADUserStartedSpeakingFrame(),
        *_frames(speak(stack, text)),
        *_frames(np.zeros(int(0.3 * RATE), np.int16)),
        # 2 s: on a busy 2-core machine (the whole suite) 1 s was once not enough.
        SleepFrame(sleep=2.0),
        VADUserStoppedSpeakingFrame(),
        *_frames(np.zeros(int(0.1 * RATE), np.int16)),
        SleepFrame(sleep=1.0),
    ]


def _as_written(texts: list[str]) -> str:
    """A turn's transcripts as Pipecat's user aggregator writes them to the context."""
    return concatenate_aggregated_text(
        [TextPartForConcatenation(t, includes_inter_part_spaces=False) for t in texts]
    )


async def test_the_stt_sends_the_turns_words_so_far_before_its_transcript(stack):
    stt = SharedWhisperSTTService(
        model=stack.whisper, settings=SharedWhisperSTTService.Settings(language="en")
    )
    frames = [
        *_frames(np.zeros(int(0.5 * RATE), np.int16)),
        UserStartedSpeakingFrame(),
        *_segment(stack, "I went to the market this morning."),
        *_segment(stack, "I bought apples and bread."),  # the same turn, after a pause
        UserStartedSpeakingFrame(),  # a new turn
        *_segment(stack, "Thank you."),
    ]
    down, _ = await run_test(
        stt,
        frames_to_send=frames,
        expected_down_frames=None,
        ignore_start=True,
    )
    said = [f for f in down if isinstance(f, (EarlyTranscriptFrame, TranscriptionFrame))]
    transcripts = [f.text for f in said if isinstance(f, TranscriptionFrame)]
    assert len(transcripts) == 3, said
    # Before each transcript, the early guess: every word of the turn so far, as the
    # context will hold them.
    turns = [transcripts[:1], transcripts[:2], transcripts[2:]]
    for transcript, turn in zip(transcripts, turns):
        at = next(i for i, f in enumerate(said) if f.text == transcript)
        assert at > 0 and isinstance(said[at - 1], EarlyTranscriptFrame), said
        assert said[at - 1].text == _as_written(turn)
    assert "market" in turns[1][0].lower() and "apples" in _as_written(turns[1]).lower()
    assert "market" not in said[-2].text.lower()  # the new turn's guess is its own


async def _read_before_each_reply(stack, monkeypatch, session: str, frames: list):
    """Runs ``frames`` through the in-process LLM service; what the session's cache held
    and the prompt, at each reply the engine was asked for, and the frames sent down."""
    from pipelines.services.llm import backend, llm_settings

    config = stack.config
    llm = backend("llama-cpp").service(stack.llm, config, session, llm_settings(config, stack.llm))
    read_before: list[tuple[list[int], list[int]]] = []
    real = stack.llm.stream_chat

    def recorded(messages, **kwargs):
        read_before.append((stack.llm.cached_tokens(session), stack.llm.tokens(messages)))
        return real(messages, **kwargs)

    monkeypatch.setattr(stack.llm, "stream_chat", recorded)
    try:
        down, _ = await run_test(llm, frames_to_send=frames, expected_down_frames=None)
    finally:
        stack.llm.forget(session)
    return read_before, down


def _asked(words: str, *, speculation: bool = False) -> LLMContextFrame:
    context = LLMContext()
    context.add_message({"role": "user", "content": words})
    return LLMContextFrame(context=context, speculation=speculation)


async def test_the_reply_to_words_read_ahead_reads_only_its_last_prompt_token(stack, monkeypatch):
    """The LLM reads the early transcript as the user's message, to where the reply
    begins; the turn's context then arrives with the same words and its reply starts
    from that cache. The guess itself is not answered."""
    from pipecat.frames.frames import LLMTextFrame

    question = "What is the capital of Italy?"
    read_before, down = await _read_before_each_reply(
        stack,
        monkeypatch,
        "early",
        [
            SleepFrame(sleep=1.0),
            EarlyTranscriptFrame(text=question),
            SleepFrame(sleep=2.0),
            _asked(question),
        ],
    )
    assert len(read_before) == 1  # the guess was read, not answered
    cached, prompt = read_before[0]
    assert cached == prompt
    assert [f for f in down if isinstance(f, LLMTextFrame)]
    assert not [f for f in down if isinstance(f, EarlyTranscriptFrame)]


async def test_a_withdrawn_speculative_reply_is_not_in_the_guess_of_the_turns_words(
    stack, monkeypatch
):
    """A speculative reply to the turn's first words, written whole, then withdrawn
    because the user went on: the guess of the whole turn is read after the conversation
    the user heard, without it, so the turn's reply again finds its prompt read."""
    from pipecat.frames.frames import EagerEndOfTurnCancelFrame

    first, whole = "You have...", "You have... two new messages."
    read_before, _ = await _read_before_each_reply(
        stack,
        monkeypatch,
        "withdrawn",
        [
            SleepFrame(sleep=1.0),
            _asked(first, speculation=True),
            SleepFrame(sleep=3.0),  # the speculative reply is written whole
            EagerEndOfTurnCancelFrame(),
            SleepFrame(sleep=0.2),
            EarlyTranscriptFrame(text=whole),
            SleepFrame(sleep=2.0),
            _asked(whole),
        ],
    )
    assert len(read_before) == 2  # the speculative reply, then the turn's
    cached, prompt = read_before[1]
    assert cached == prompt
