"""Pipecat's local Smart Turn v3 analyzer with its ONNX session shared by all sessions.

The analyzer keeps per-conversation audio, so each session needs its own instance, but
the model itself is read-only: loading it once saves its memory in every session.
onnxruntime sessions may be run from several threads at once.
"""

from __future__ import annotations

import onnxruntime as ort
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3


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
    def __init__(self, *, session: ort.InferenceSession, **kwargs):
        # Skips LocalSmartTurnAnalyzerV3.__init__, whose only other job is loading the model.
        BaseSmartTurn.__init__(self, **kwargs)
        self._log_data = False
        self._session = session
