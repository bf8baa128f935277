"""What we take from Pipecat's insides, checked against the pinned Pipecat itself.

pipelines/services/analyzers.py is the one module that reaches past Pipecat's public
surface: it gives Pipecat's Silero VAD and Smart Turn analyzers the process's shared ONNX
sessions instead of letting each session load its own (Pipecat offers no way to pass
one). These tests build Pipecat's own analyzers beside ours and require the same
verdicts on the same real speech: if a Pipecat release changes what those analyzers
keep or how they predict, they fail here, not silently in a call.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer

from pipelines.build import vad_params
from pipelines.services.analyzers import SharedSileroVADAnalyzer, SharedSmartTurnAnalyzer
from pipelines.turns.turn_end import load as load_smart_turn
from tests.conftest import speak

RATE = 16000


def test_pipecat_is_the_release_these_adapters_were_written_for():
    # pyproject pins it; a different one must come with these tests passing again.
    assert importlib.metadata.version("pipecat-ai") == "1.14.0"


async def test_the_shared_silero_hears_what_pipecats_own_silero_hears(stack):
    speech = speak(stack, "I would like to book a table for two, please.")
    audio = np.concatenate([np.zeros(RATE // 2, np.int16), speech, np.zeros(RATE, np.int16)])
    params = vad_params(stack.config)
    ours = SharedSileroVADAnalyzer(session=stack.silero, params=params)
    theirs = SileroVADAnalyzer(params=params)
    for analyzer in (ours, theirs):
        analyzer.set_sample_rate(RATE)
    chunk = ours.num_frames_required()
    assert chunk == theirs.num_frames_required()
    ours_conf, theirs_conf = [], []
    for start in range(0, len(audio) - chunk, chunk):
        window = audio[start : start + chunk].tobytes()
        ours_conf.append(ours.voice_confidence(window))
        theirs_conf.append(theirs.voice_confidence(window))
    # And the speech/quiet states a session's VAD reports, 20 ms at a time.
    ours = SharedSileroVADAnalyzer(session=stack.silero, params=params)
    theirs = SileroVADAnalyzer(params=params)
    for analyzer in (ours, theirs):
        analyzer.set_sample_rate(RATE)
    ours_state, theirs_state = [], []
    for start in range(0, len(audio) - 320, 320):
        window = audio[start : start + 320].tobytes()
        ours_state.append(await ours.analyze_audio(window))
        theirs_state.append(await theirs.analyze_audio(window))
    np.testing.assert_allclose(ours_conf, theirs_conf, atol=1e-5)
    assert max(ours_conf) > 0.9 and min(ours_conf) < 0.1  # it heard speech and silence
    assert ours_state == theirs_state


@pytest.mark.parametrize("text", ["What time is it?", "I went to the"])
async def test_the_shared_smart_turn_judges_as_pipecats_own(stack, text):
    speech = speak(stack, text)
    audio = np.concatenate([speech, np.zeros(RATE // 5, np.int16)]).astype(np.float32) / 32768
    ours = SharedSmartTurnAnalyzer(session=load_smart_turn())
    theirs = LocalSmartTurnAnalyzerV3()
    ours_result = ours._predict_endpoint(audio)
    theirs_result = theirs._predict_endpoint(audio)
    assert ours_result["prediction"] == theirs_result["prediction"]
    assert abs(ours_result["probability"] - theirs_result["probability"]) < 1e-5
