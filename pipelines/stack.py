"""The models of one process: loaded and warmed up once, shared by every session."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from loguru import logger

from agent.config import AgentConfig
from agent.llm import LocalLLM
from agent.models import resolve_model
from tts.base import SpeechEngine


@dataclass
class ModelStack:
    config: AgentConfig
    whisper: object
    llm: LocalLLM | None  # None when the LLM is an OpenAI-compatible server
    speech: SpeechEngine
    # Shared ONNX sessions of the per-session analyzers (pipelines/shared_analyzers.py);
    # smart_turn is None unless turn.end_detection is smart-turn.
    silero: object | None = None
    smart_turn: object | None = None
    load_secs: dict[str, float] = field(default_factory=dict)


def load_stack(config: AgentConfig, *, warm_up: bool = True) -> ModelStack:
    """Resolve, load and warm up every model the config names; errors name what is missing."""
    from faster_whisper import WhisperModel

    times: dict[str, float] = {}

    start = time.perf_counter()
    asr_path = resolve_model(config.asr.model, "asr")
    whisper = WhisperModel(
        str(asr_path),
        device=config.asr.device,
        compute_type=config.asr.compute_type,
        cpu_threads=config.asr.cpu_threads,
    )
    times["asr"] = time.perf_counter() - start

    llm = None
    if config.llm.backend == "llama-cpp":
        start = time.perf_counter()
        assert config.llm.model is not None
        llm = LocalLLM(
            resolve_model(config.llm.model, "llm"),
            context_tokens=config.llm.context_tokens,
            threads=config.llm.threads,
        )
        times["llm"] = time.perf_counter() - start

    start = time.perf_counter()
    speech = load_speech_engine(config)
    times["tts"] = time.perf_counter() - start

    from pipelines.shared_analyzers import load_silero_session, load_smart_turn_session

    silero = load_silero_session()
    smart_turn = load_smart_turn_session() if config.turn.end_detection == "smart-turn" else None

    if warm_up:
        start = time.perf_counter()
        list(whisper.transcribe(np.zeros(16000, np.float32), beam_size=1)[0])
        if llm is not None:
            llm.warm_up()
        speech.warm_up()
        times["warm_up"] = time.perf_counter() - start
    logger.info("models loaded: " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
    return ModelStack(
        config=config,
        whisper=whisper,
        llm=llm,
        speech=speech,
        silero=silero,
        smart_turn=smart_turn,
        load_secs=times,
    )


def load_speech_engine(config: AgentConfig) -> SpeechEngine:
    if config.tts.engine == "piper":
        from tts.piper_voice import PiperEngine, PiperStyle

        piper = config.tts.piper
        assert piper is not None
        return PiperEngine(
            resolve_model(piper.model, "tts"),
            PiperStyle(
                length_scale=piper.length_scale,
                noise_scale=piper.noise_scale,
                noise_w_scale=piper.noise_w_scale,
                volume=piper.volume,
            ),
        )
    raise ValueError(f"unknown tts.engine '{config.tts.engine}'")
