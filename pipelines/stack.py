"""The models of one process: loaded and warmed up once, shared by every session."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
from loguru import logger

from agent.config import AgentConfig
from agent.cpu_share import CpuShare
from agent.llm.local import LocalLLM
from agent.models import resolve_model
from pipelines.services.llm import backend
from pipelines.turns import turn_end_policy
from tts import load_engine
from tts.base import SpeechEngine


@dataclass
class ModelStack:
    config: AgentConfig
    whisper: object
    # What the LLM backend shares between sessions: the in-process engine (llama-cpp), or
    # None (a server holds the model).
    llm: LocalLLM | None
    speech: SpeechEngine
    # Lets a reply's first phrase be synthesised without the LLM competing (agent/cpu_share.py).
    cpu: CpuShare = field(default_factory=CpuShare)
    # Silero's ONNX session, shared by the per-session analyzers (pipelines/services/analyzers.py).
    silero: object | None = None
    # What the turn-end policy shares (Smart Turn's session), or None (pipelines/turns).
    turn_end: object | None = None
    load_secs: dict[str, float] = field(default_factory=dict)


def load_stack(
    config: AgentConfig,
    *,
    warm_up: bool = True,
    llm: object | None = None,
    speech: SpeechEngine | None = None,
) -> ModelStack:
    """Resolve, load and warm up every model the config names; errors name what is missing.
    ``llm`` (with the llama-cpp backend) and ``speech``: engines to use instead of loading
    them (a cluster's shared ones, pipelines/cluster/remote.py)."""
    # llama.cpp's and Whisper's threads are OpenMP's, which spin while they wait by default,
    # each runtime beside the other's. On 2 cores the spinning starved the rest: in the
    # conversation benchmark the LLM's first token had 4-6 s outliers (p95 5.1 s); waiting
    # passively, p95 0.65 s (p50 0.51 s against 0.30 s). Read when each runtime loads, so it
    # is set before either does; a value set by the user stays.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from faster_whisper import WhisperModel

    # Every name the config gives a registry is known before anything loads.
    llm_backend = backend(config.llm.backend)
    turn_end = turn_end_policy(config.turn.end_detection)
    times: dict[str, float] = {}
    cpu = CpuShare()

    # The voice first: it is the part most likely to be missing or not fit this machine
    # (a GPU voice without a GPU fails now, not after the other models have loaded).
    if speech is None:
        start = time.perf_counter()
        speech = load_engine(config)
        times["tts"] = time.perf_counter() - start

    start = time.perf_counter()
    asr_path = resolve_model(config.asr.model, "asr")
    whisper = WhisperModel(
        str(asr_path),
        device=config.asr.device,
        compute_type=config.asr.compute_type,
        cpu_threads=config.asr.cpu_threads,
    )
    times["asr"] = time.perf_counter() - start

    if llm is None:
        start = time.perf_counter()
        llm = llm_backend.load(config, cpu)
        if llm is not None:
            times["llm"] = time.perf_counter() - start

    from pipelines.services.analyzers import load_silero_session

    silero = load_silero_session()
    turn_end_shared = turn_end.load()

    if warm_up:
        start = time.perf_counter()
        list(whisper.transcribe(np.zeros(16000, np.float32), beam_size=1)[0])
        if llm is not None:
            llm.warm_up()
        speech.warm_up()
        # The pitch tracker's first call pays for its own set-up (~0.1 s): not in a turn.
        from agent.tone.analysis import analyze_tone

        tone = np.sin(np.arange(16000) * 2 * np.pi * 150 / 16000) * 0.3
        analyze_tone((tone * 32767).astype(np.int16), 16000, "ah")
        times["warm_up"] = time.perf_counter() - start
    logger.info("models loaded: " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
    return ModelStack(
        config=config,
        whisper=whisper,
        llm=llm,
        speech=speech,
        cpu=cpu,
        silero=silero,
        turn_end=turn_end_shared,
        load_secs=times,
    )
