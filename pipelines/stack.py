"""The models of one process: loaded and warmed up once, shared by every session."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
from loguru import logger

from agent.config import AgentConfig, ConfigError
from agent.cpu_share import CpuShare
from agent.llm.local import LocalLLM
from agent.models import resolve_model
from tts.base import SpeechEngine


@dataclass
class ModelStack:
    config: AgentConfig
    whisper: object
    llm: LocalLLM | None  # None when the LLM is an OpenAI-compatible server
    speech: SpeechEngine
    # Shared ONNX sessions of the per-session analyzers (pipelines/services/analyzers.py);
    # smart_turn is None unless turn.end_detection is smart-turn.
    # Lets a reply's first phrase be synthesised without the LLM competing (agent/cpu_share.py).
    cpu: CpuShare = field(default_factory=CpuShare)
    silero: object | None = None
    smart_turn: object | None = None
    load_secs: dict[str, float] = field(default_factory=dict)


def load_stack(config: AgentConfig, *, warm_up: bool = True) -> ModelStack:
    """Resolve, load and warm up every model the config names; errors name what is missing."""
    # llama.cpp's and Whisper's threads are OpenMP's, which spin while they wait by default,
    # each runtime beside the other's. On 2 cores the spinning starved the rest: in the
    # conversation benchmark the LLM's first token had 4-6 s outliers (p95 5.1 s); waiting
    # passively, p95 0.65 s (p50 0.51 s against 0.30 s). Read when each runtime loads, so it
    # is set before either does; a value set by the user stays.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from faster_whisper import WhisperModel

    times: dict[str, float] = {}
    cpu = CpuShare()

    # The voice first: it is the part most likely to be missing or not fit this machine
    # (a GPU voice without a GPU fails now, not after the other models have loaded).
    start = time.perf_counter()
    speech = load_speech_engine(config)
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

    llm = None
    if config.llm.backend == "llama-cpp":
        start = time.perf_counter()
        llm = LocalLLM.from_config(config.llm, cpu=cpu, sessions=config.server.max_sessions)
        times["llm"] = time.perf_counter() - start

    from pipelines.services.analyzers import load_silero_session, load_smart_turn_session

    silero = load_silero_session()
    smart_turn = load_smart_turn_session() if config.turn.end_detection == "smart-turn" else None

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
    if config.tts.engine == "miso":
        return load_miso_engine(config)
    raise ValueError(f"unknown tts.engine '{config.tts.engine}'")


def load_miso_engine(config: AgentConfig) -> SpeechEngine:
    try:
        import torch
    except ImportError:
        raise ConfigError(
            "tts.engine 'miso' needs PyTorch and transformers: install torch for your GPU "
            "(https://pytorch.org), then ./setup.sh --miso"
        ) from None

    from pipelines.local.file_transport import load_input_wav
    from tts.base import SpokenAudio
    from tts.miso_voice import MisoEngine, MisoOptions

    miso = config.tts.miso
    assert miso is not None
    prompt = None
    if miso.voice_prompt is not None:
        samples, _ = load_input_wav(miso.voice_prompt.audio, 24_000)
        prompt = SpokenAudio(samples, 24_000, miso.voice_prompt.text)
    return MisoEngine.load(
        miso.checkpoint,
        codec=miso.codec,
        tokenizer=miso.tokenizer,
        text_format=miso.text_format,
        device=miso.device,
        dtype=getattr(torch, miso.dtype),
        allow_cpu=miso.allow_cpu,
        voice_prompt=prompt,
        compile_decoder=miso.compile_decoder,
        sessions=config.server.max_sessions,
        options=MisoOptions(
            user_speaker=miso.user_speaker,
            bot_speaker=miso.bot_speaker,
            temperature=miso.temperature,
            topk=miso.topk,
            max_audio_secs=miso.max_audio_secs,
            num_codebooks=miso.num_codebooks,
            first_chunk_frames=miso.first_chunk_frames,
            chunk_frames=miso.chunk_frames,
            seed=miso.seed,
        ),
    )
