"""The embedded CPU voice: a Piper ONNX voice run in process by piper-tts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tts.base import EngineUnavailableError, SpeechContext, SpeechEngine

# Level of the neutral delivery below Piper's peak-normalised output, so a louder style has
# headroom before the limiter (Piper scales each chunk to full scale, then by ``volume``).
NEUTRAL_GAIN_DB = -4.0
# Piper's speech duration moves less than its length_scale: a scale of 0.65 gives about 0.74
# of the neutral duration (measured by benchmarks/speech_styles.py), i.e. duration goes as
# length_scale ** 0.7. The scale is raised to 1/0.7 so the rate comes out as asked.
LENGTH_SCALE_RESPONSE = 0.7


@dataclass(frozen=True)
class PiperStyle:
    """Piper's synthesis knobs. length_scale < 1 speaks faster; noise scales add variation."""

    length_scale: float = 1.0
    noise_scale: float = 0.667
    noise_w_scale: float = 0.8
    volume: float = 1.0


class PiperEngine(SpeechEngine):
    """Piper voice shared by every session; onnxruntime sessions are safe to call concurrently."""

    def __init__(self, model_path: Path, style: PiperStyle = PiperStyle()):
        config_path = Path(str(model_path) + ".json")
        if not config_path.exists():
            raise EngineUnavailableError(
                f"tts.piper.model: the voice's config {config_path} is missing (a Piper voice "
                "is an .onnx file with its .onnx.json beside it)"
            )
        try:
            self._voice = _load_voice(model_path, config_path)
        except Exception as e:  # noqa: BLE001 - onnxruntime and json say it many ways
            raise EngineUnavailableError(
                f"tts.piper.model: {model_path} is not a Piper voice (an ONNX model with its "
                f".onnx.json): {type(e).__name__}: {str(e)[:200]}"
            ) from None
        self.sample_rate = int(self._voice.config.sample_rate)
        self.style = style

    def synthesize(self, text: str, context: SpeechContext) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        if not text or not text.strip():
            raise ValueError("cannot speak empty text")
        base, wanted = self.style, context.style
        # Pitch moves by playing the audio faster/slower (resampling); Piper first speaks
        # that much slower/faster so the duration comes out as the rate asks.
        pitch_factor = 2.0 ** (wanted.pitch_semitones / 12)
        config = SynthesisConfig(
            length_scale=base.length_scale
            * (pitch_factor / wanted.rate) ** (1 / LENGTH_SCALE_RESPONSE),
            noise_scale=base.noise_scale * wanted.expressiveness,
            noise_w_scale=base.noise_w_scale * wanted.expressiveness,
            volume=base.volume,
        )
        gain = 10.0 ** ((NEUTRAL_GAIN_DB + wanted.loudness_db) / 20)
        # Piper yields one chunk per sentence it finds in the text.
        for chunk in self._voice.synthesize(text, syn_config=config):
            audio = np.frombuffer(chunk.audio_int16_bytes, dtype=np.int16)
            yield _restyle(audio, self.sample_rate, pitch_factor, gain)


def _load_voice(model_path: Path, config_path: Path):
    """What piper's ``PiperVoice.load`` makes, with onnxruntime's memory pattern off: it
    plans memory for every input shape it meets and keeps each plan, and every sentence
    is a new length, so a server grew 1-2 MiB per call spoken (698 then 1954 KiB a call
    over 60 calls with it, 54 then 26 without, no slower: python -m
    benchmarks.memory_by_part --parts piper)."""
    import json

    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig
    from piper.phonemize_espeak import ESPEAK_DATA_DIR

    options = onnxruntime.SessionOptions()
    options.enable_mem_pattern = False
    return PiperVoice(
        config=PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8"))),
        session=onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        ),
        espeak_data_dir=Path(ESPEAK_DATA_DIR),
        download_dir=Path.cwd(),
    )


def _restyle(audio: np.ndarray, rate: int, pitch_factor: float, gain: float) -> np.ndarray:
    """Shift pitch by ``pitch_factor`` (resampling) and apply ``gain`` with a soft limit."""
    samples = audio.astype(np.float32) / 32768.0
    if abs(pitch_factor - 1.0) > 1e-3:
        import soxr

        samples = soxr.resample(samples, rate * pitch_factor, rate)
    samples = samples * gain
    # Above 0.9 of full scale, compress smoothly instead of clipping.
    over = np.abs(samples) > 0.9
    if over.any():
        samples[over] = np.sign(samples[over]) * (
            0.9 + 0.1 * np.tanh((np.abs(samples[over]) - 0.9) / 0.1)
        )
    return (samples * 32767).astype(np.int16)


def load(config) -> PiperEngine:
    """The Piper voice of ``config.tts.piper`` (an AgentConfig)."""
    from agent.models import resolve_model

    piper = config.tts.piper
    return PiperEngine(
        resolve_model(piper.model, "tts"),
        PiperStyle(
            length_scale=piper.length_scale,
            noise_scale=piper.noise_scale,
            noise_w_scale=piper.noise_w_scale,
            volume=piper.volume,
        ),
    )
