"""Small random-weight MisoTTS pieces shared by the MisoTTS tests: a checkpoint with the
real vocabularies (Llama-3 text, 32 x 2051 audio) and tiny transformers, and a small Mimi."""

from __future__ import annotations

from pathlib import Path

import yaml

from tts.miso import MisoConfig, TransformerSizes

TINY_MISO = MisoConfig(
    backbone=TransformerSizes(num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64,
                              intermediate_dim=128),
    decoder=TransformerSizes(num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
                             intermediate_dim=64),
)

# kyutai/mimi's architecture shrunk to run in milliseconds. The upsampling ratios are left at
# their defaults so a frame is still 1920 samples; the sliding window (in 25 Hz transformer
# steps, 2 per frame) is 3 frames, so the streaming tests run well past it. A full layer scale
# (kyutai/mimi's is 0.01 at init) makes the transformer's part of the output large enough that
# a key/value cache mistake could not hide under the convolutions' part.
SMALL_MIMI = {
    "layer_scale_initial_scale": 1.0,
    "hidden_size": 64,
    "num_filters": 8,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "sliding_window": 6,
    "upsample_groups": 64,
    "codebook_size": 256,
    "codebook_dim": 32,
    "vector_quantization_hidden_dimension": 32,
}


def tiny_parts(directory, model_seed: int, codec_seed: int):
    """A tiny random model (from a release-format checkpoint written to ``directory``), the
    real Llama-3 tokenizer and a small random Mimi."""
    from tts.miso import load_model, write_random_checkpoint
    from tts.miso.codec import MimiCodec
    from tts.miso.text import TextTokenizer

    checkpoint = write_random_checkpoint(directory / "ckpt", TINY_MISO, seed=model_seed)
    codec = MimiCodec.random(SMALL_MIMI, seed=codec_seed)
    return load_model(checkpoint), TextTokenizer.load(), codec


def miso_config_file(tmp_path, **miso_overrides):
    """The tiny stack's config file (configs/tiny.yaml) speaking with a tiny random MisoTTS
    on the CPU, written in ``tmp_path``."""
    from tts.miso import write_random_checkpoint
    from tts.miso.codec import MimiCodec

    checkpoint = write_random_checkpoint(tmp_path / "miso-tiny", TINY_MISO, seed=1)
    codec_dir = tmp_path / "mimi-small"
    MimiCodec.random(SMALL_MIMI, seed=2).model.save_pretrained(codec_dir)
    config = yaml.safe_load(Path("configs/tiny.yaml").read_text())
    config["tts"] = {
        "engine": "miso",
        "miso": {
            "checkpoint": str(checkpoint),
            "codec": str(codec_dir),
            "device": "cpu",
            "dtype": "float32",
            "max_audio_secs": 0.64,
            "seed": 0,
            **miso_overrides,
        },
    }
    path = tmp_path / "miso.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
