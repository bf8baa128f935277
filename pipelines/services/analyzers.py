"""Pipecat's Silero VAD and Smart Turn v3 analyzers with their ONNX sessions shared: the
one module that reaches past Pipecat's public surface (checked against the pinned release by
tests/test_pipecat_adapters.py).

Each analyzer keeps per-conversation state (Silero's recurrent state, Smart Turn's audio),
so each session needs its own instance, but the models are read-only: loading each once
saves its memory in every session. onnxruntime sessions may be run from several threads
at once.
"""

from __future__ import annotations

from importlib import resources

import onnxruntime as ort
from loguru import logger
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams

from agent.cpu_share import CpuShare


def _single_thread_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    return options


def load_silero_session() -> ort.InferenceSession:
    """Pipecat's bundled Silero VAD model, with the options its analyzer uses."""
    path = resources.files("pipecat.audio.vad.data").joinpath("silero_vad.onnx")
    return ort.InferenceSession(
        str(path), providers=["CPUExecutionProvider"], sess_options=_single_thread_options()
    )


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero on the process's shared session. ``max_speech_secs``: a stretch of speech
    that has gone on this long without a pause of ``stop_secs`` is cut: the analyzer hears
    silence for a moment, so the VAD reports a stop and the speech so far is transcribed
    and judged (a monologue would otherwise be one endless segment)."""

    def __init__(
        self,
        *,
        session: ort.InferenceSession,
        params: VADParams,
        max_speech_secs: float | None = None,
        **kwargs,
    ):
        # Skips SileroVADAnalyzer.__init__, which loads the model, and sets what it sets.
        VADAnalyzer.__init__(self, params=params, **kwargs)
        model = SileroOnnxModel.__new__(SileroOnnxModel)
        model.session = session
        model.sample_rates = [8000, 16000]
        model.reset_states()
        self._model = model
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        self._max_speech_secs = max_speech_secs
        self._speech_secs = 0.0  # the current stretch of speech
        self._quiet_secs = 0.0  # the current pause within it
        self._cut_secs = 0.0  # silence still to report for a cut

    def voice_confidence(self, buffer) -> float:
        confidence = super().voice_confidence(buffer)
        if not self._max_speech_secs:
            return confidence
        secs = len(buffer) / 2 / self.sample_rate
        if self._cut_secs > 0:
            self._cut_secs -= secs
            return 0.0
        if confidence >= self.params.confidence:
            self._speech_secs += self._quiet_secs + secs
            self._quiet_secs = 0.0
        elif self._speech_secs:
            self._quiet_secs += secs
            if self._quiet_secs >= self.params.stop_secs:  # a pause the VAD hears ends it
                self._speech_secs = self._quiet_secs = 0.0
        if self._speech_secs >= self._max_speech_secs:
            logger.info(f"{self._speech_secs:.0f} s of speech without a pause: cut here")
            self._speech_secs = self._quiet_secs = 0.0
            self._cut_secs = self.params.stop_secs + 0.1
            return 0.0
        return confidence


def load_smart_turn_session() -> ort.InferenceSession:
    """The bundled Smart Turn model, built with the options Pipecat's analyzer uses."""
    from importlib import resources

    path = resources.files("pipecat.audio.turn.smart_turn.data").joinpath(
        "smart-turn-v3.2-cpu.onnx"
    )
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options)


class SharedSmartTurnAnalyzer(LocalSmartTurnAnalyzerV3):
    """Smart Turn v3 on a shared session. Its verdict decides when a finished turn ends,
    so it runs as urgent work (agent/cpu_share.py): the LLM's speculative reply waits the
    ~0.13 s it takes instead of doubling it by competing for the same 2 cores."""

    def __init__(self, *, session: ort.InferenceSession, cpu: CpuShare | None = None, **kwargs):
        # Skips LocalSmartTurnAnalyzerV3.__init__, whose only other job is loading the model.
        BaseSmartTurn.__init__(self, **kwargs)
        self._log_data = False
        self._session = session
        self._cpu = cpu or CpuShare()

    def _predict_endpoint(self, audio_array):
        with self._cpu.urgent():
            return super()._predict_endpoint(audio_array)
