"""The embedded CPU voice: a Piper ONNX voice run in process by piper-tts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tts.base import SpeechContext, SpeechEngine


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
        from piper import PiperVoice

        config_path = Path(str(model_path) + ".json")
        if not config_path.exists():
            raise FileNotFoundError(f"Piper voice config missing: {config_path}")
        self._voice = PiperVoice.load(str(model_path), config_path=str(config_path))
        self.sample_rate = int(self._voice.config.sample_rate)
        self.style = style

    def synthesize(self, text: str, context: SpeechContext) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        if not text or not text.strip():
            raise ValueError("cannot speak empty text")
        style = self.style
        config = SynthesisConfig(
            length_scale=style.length_scale,
            noise_scale=style.noise_scale,
            noise_w_scale=style.noise_w_scale,
            volume=style.volume,
        )
        # Piper yields one chunk per sentence it finds in the text.
        for chunk in self._voice.synthesize(text, syn_config=config):
            yield np.frombuffer(chunk.audio_int16_bytes, dtype=np.int16)
