"""MisoTTS (and Sesame CSM-1B, same format) in plain torch: model, checkpoints, text and
audio tokenizers, and a streaming generator. Nothing here depends on Pipecat."""

from tts.miso.checkpoint import CheckpointError, load_model, write_random_checkpoint
from tts.miso.flavors import KNOWN_FLAVORS, TransformerSizes
from tts.miso.model import MisoConfig, MisoModel

__all__ = [
    "KNOWN_FLAVORS",
    "CheckpointError",
    "MisoConfig",
    "MisoModel",
    "TransformerSizes",
    "load_model",
    "write_random_checkpoint",
]
