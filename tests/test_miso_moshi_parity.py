"""Our Mimi against kyutai's own, the ``moshi`` package that the reference MisoTTS / Sesame CSM
runs: the same weights, converted by tts/miso/moshi_mimi.py, must give the same codes and
the same audio, one-shot and streaming.

moshi lives in its own venv (.venv-moshi, made by ``./setup.sh --test``): the side script
tests/moshi_reference_mimi.py builds moshi's Mimi with random weights, runs it on fixed inputs
and writes the weights (moshi's format) and its results; this loads both and compares.

Two models: kyutai's full architecture (what real checkpoints have), on inputs shorter than
its 250-step attention window; and tests/miso_setup.py's SMALL_MIMI, whose 6-step window the
inputs run far past.

Errors are max |ours - moshi| / max |moshi| (the peak): float32 rounding puts them near 1e-6.
The measured figures are printed (``pytest -s``); the last run's are in the docstrings.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import MimiConfig

from tests.miso_setup import SMALL_MIMI
from tts.miso import moshi_mimi
from tts.miso.codec import MimiCodec
from tts.miso.moshi_mimi import MoshiCheckpointError, convert_moshi_state_dict

REPO = Path(__file__).resolve().parent.parent
MOSHI_PYTHON = REPO / ".venv-moshi" / "bin" / "python"
SIDE_SCRIPT = REPO / "tests" / "moshi_reference_mimi.py"
SEED = 0
# 10x the float32 rounding measured (~1e-6); a wrong weight or mask is 1e-3 and up.
TOLERANCE = 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Reference:
    """What the side script wrote: moshi's weights file, its inputs and results."""

    def __init__(self, folder: Path):
        self.weights = folder / "mimi.safetensors"
        self.tensors = load_file(folder / "reference.safetensors")
        with safe_open(folder / "reference.safetensors", "pt") as handle:
            self.metadata = handle.metadata()
        self.chunks = json.loads(self.metadata["chunks"])

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def run_moshi(config: str, folder: Path) -> Reference:
    if not MOSHI_PYTHON.exists():
        pytest.fail(
            f"kyutai's moshi is not installed: {MOSHI_PYTHON} is missing. Run ./setup.sh --test "
            "(it makes .venv-moshi, moshi's own venv beside the agent's)",
            pytrace=False,
        )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", VIRTUAL_ENV=str(MOSHI_PYTHON.parent.parent))
    command = [str(MOSHI_PYTHON), str(SIDE_SCRIPT), f"--seed={SEED}", f"--config={config}"]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, f"--out-dir={folder}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}",
            pytrace=False,
        )
    print(f"\nmoshi reference ({config}): {time.perf_counter() - started:.1f} s")
    return Reference(folder)


@pytest.fixture(scope="module")
def full_reference(tmp_path_factory) -> Reference:
    return run_moshi("full", tmp_path_factory.mktemp("moshi-full"))


@pytest.fixture(scope="module")
def full_codec(full_reference) -> MimiCodec:
    # The way a user loads kyutai's file: MimiCodec.load of the .safetensors path.
    codec = MimiCodec.load(full_reference.weights)
    full_reference.weights.unlink()  # 385 MB, not to be kept by pytest's last three tmp dirs
    return codec


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory) -> Reference:
    return run_moshi("small", tmp_path_factory.mktemp("moshi-small"))


@pytest.fixture(scope="module")
def small_state(small_reference) -> dict[str, torch.Tensor]:
    return load_file(small_reference.weights)


@pytest.fixture(scope="module")
def small_codec(small_state) -> MimiCodec:
    return MimiCodec.from_moshi(small_state, SMALL_MIMI)


def error(ours: torch.Tensor, moshi: torch.Tensor, what: str) -> float:
    """max |ours - moshi| / peak of moshi's, printed with the max abs error and the peak."""
    assert ours.shape == moshi.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(moshi.shape)}"
    worst = (ours - moshi).abs().max().item()
    peak = moshi.abs().max().item()
    print(f"\n{what}: max abs {worst:.3g}, peak {peak:.3g}, max abs / peak {worst / peak:.3g}")
    return worst / peak


def stream(codec: MimiCodec, codes: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    assert sum(chunks) == codes.shape[1]
    decoder, pieces, start = codec.streaming_decoder(), [], 0
    for size in chunks:
        pieces.append(decoder.decode(codes[:, start : start + size]))
        start += size
    return torch.cat(pieces)


def assert_same_codes(codec: MimiCodec, reference: Reference, name: str) -> None:
    wave, expected = reference[f"wave_{name}"], reference[f"codes_{name}"]
    codes = codec.encode(wave)
    frames = -(-len(wave) // codec.samples_per_frame)
    assert codes.shape == expected.shape == (32, frames)
    differing = int((codes != expected).sum())
    print(f"\ncodes of {name} ({len(wave)} samples): {differing} of {codes.numel()} differ")
    assert differing == 0
    # Not a trivial agreement: the random codebooks give varied codes.
    assert len(set(expected.flatten().tolist())) > frames * 4


# --------------------------------------------------------------------------------------------
# kyutai's architecture


@pytest.mark.parametrize("name", ["partial", "whole"])
def test_codes_are_moshis(full_codec, full_reference, name):
    """partial: 12 frames + 700 samples (the last frame zero-padded, as moshi does); whole:
    9 frames. Last run: identical, 0 of 416 / 288 differ."""
    assert len(full_reference["wave_partial"]) % full_codec.samples_per_frame == 700
    assert_same_codes(full_codec, full_reference, name)


def test_codes_with_8_codebooks_are_moshis(full_codec, full_reference):
    codec = MimiCodec(full_codec.model, num_codebooks=8)
    assert torch.equal(
        codec.encode(full_reference["wave_partial"]), full_reference["codes_partial_k8"]
    )


def test_one_shot_decode_is_moshis(full_codec, full_reference):
    """20 frames of random codes. Last run: max abs 1.19e-07, peak 0.182, ratio 6.6e-07."""
    audio = full_codec.decode(full_reference["decode_codes"])
    assert error(audio, full_reference["decode_oneshot"], "one-shot decode") < TOLERANCE


def test_one_shot_decode_of_8_codebooks_is_moshis(full_codec, full_reference):
    """Last run: max abs 1.19e-07, peak 0.179, ratio 6.7e-07."""
    audio = full_codec.decode(full_reference["decode_codes"][:8])
    assert error(audio, full_reference["decode_k8"], "one-shot decode, 8 codebooks") < TOLERANCE


@pytest.mark.parametrize("how", ["stream_1", "stream_chunks"])
def test_streaming_decode_is_moshis(full_codec, full_reference, how):
    """Our streaming decoder against moshi's (``with mimi.streaming(1)``), a frame at a time
    and in uneven chunks. Last run: max abs 1.19e-07 / 1.34e-07, ratio 6.6e-07 / 7.4e-07."""
    codes = full_reference["decode_codes"]
    chunks = [1] * codes.shape[1] if how == "stream_1" else full_reference.chunks
    audio = stream(full_codec, codes, chunks)
    assert error(audio, full_reference[how], f"streaming decode, chunks {chunks}") < TOLERANCE


# --------------------------------------------------------------------------------------------
# SMALL_MIMI: past the attention window


def test_small_codes_are_moshis(small_codec, small_reference):
    for name in ("partial", "whole"):
        assert_same_codes(small_codec, small_reference, name)


def test_decode_past_the_window_is_moshis(small_codec, small_reference):
    """24 frames, 48 transformer steps, through a 6-step window: the window is the same one
    (moshi's ``context`` is transformers' ``sliding_window``). Last run: ratio 9.6e-07."""
    audio = small_codec.decode(small_reference["decode_codes"])
    assert error(audio, small_reference["decode_oneshot"], "one-shot decode (window)") < TOLERANCE


@pytest.mark.parametrize("how", ["stream_1", "stream_chunks"])
def test_streaming_past_the_window_is_moshis_one_shot_not_its_streaming(
    small_codec, small_reference, how
):
    """Past the window moshi's streaming decode is not its own one-shot decode: its key/value
    ring buffer holds ``context`` steps, and a call adds 2 per frame (more per chunk), so the
    new steps overwrite keys that the first of them may still attend to (its mask allows
    ``context - 1`` steps back). With a larger buffer it equals its one-shot decode (checked by
    hand). Ours equals the one-shot decode, which is what the model computes in training.
    With kyutai's window (250 steps, 10 s) that happens only after 10 s of audio.
    Last run: ours vs moshi's one-shot 1.0e-06; moshi's streaming vs its one-shot 1.7e-02
    a frame at a time, 6.4e-02 in chunks."""
    codes = small_reference["decode_codes"]
    chunks = [1] * codes.shape[1] if how == "stream_1" else small_reference.chunks
    ours = stream(small_codec, codes, chunks)
    one_shot = small_reference["decode_oneshot"]
    assert error(ours, one_shot, f"our streaming vs moshi's one-shot, chunks {chunks}") < TOLERANCE
    moshi_drift = error(small_reference[how], one_shot, "moshi's streaming vs its one-shot")
    assert moshi_drift > 1e-3


def test_without_the_rotary_reordering_decode_is_not_moshis(
    small_state, small_reference, monkeypatch
):
    """The test can fail: q and k loaded in moshi's interleaved order, unchanged."""
    monkeypatch.setattr(moshi_mimi, "_interleaved_to_halves", lambda weight, heads: weight)
    codec = MimiCodec.from_moshi(small_state, SMALL_MIMI)
    audio = codec.decode(small_reference["decode_codes"])
    assert error(audio, small_reference["decode_oneshot"], "without q/k reordering") > 1e-3


# --------------------------------------------------------------------------------------------
# the converter on other names and bad input


def test_older_moshi_names_load_the_same(small_state, small_codec, small_reference):
    """The names moshi's loader also accepts: a packed ``in_proj_weight``, ``out_proj``, and the
    codebook buffers' older names."""
    renames = {
        "self_attn.in_projs.0.weight": "self_attn.in_proj_weight",
        "self_attn.out_projs.0.weight": "self_attn.out_proj.weight",
        "_codebook._initialized": "_codebook.inited",
        "_codebook.cluster_usage": "_codebook.cluster_size",
        "_codebook.embedding_sum": "_codebook.embed_avg",
    }
    older = {}
    for name, tensor in small_state.items():
        for new, old in renames.items():
            name = name.replace(new, old)
        older[name] = tensor
    assert older.keys() != small_state.keys()
    codec = MimiCodec.from_moshi(older, SMALL_MIMI)
    codes = small_reference["decode_codes"]
    assert torch.equal(codec.decode(codes), small_codec.decode(codes))


def test_load_reads_a_moshi_file(small_state, small_codec, small_reference, tmp_path):
    path = tmp_path / "tokenizer.safetensors"
    save_file(small_state, path)
    codec = MimiCodec.from_moshi(path, SMALL_MIMI, num_codebooks=8)
    assert codec.num_codebooks == 8
    codes = small_reference["decode_codes"][:8]
    assert torch.equal(codec.decode(codes), small_codec.decode(codes))


SMALL_CONFIG = MimiConfig(**SMALL_MIMI)


def convert(state):
    return convert_moshi_state_dict(state, SMALL_CONFIG)


def test_missing_tensor_is_named(small_state):
    state = dict(small_state)
    del state["decoder_transformer.transformer.layers.1.linear2.weight"]
    with pytest.raises(MoshiCheckpointError, match=r"1 tensor.*missing.*layers\.1\.mlp\.fc2"):
        convert(state)


def test_unexpected_tensor_is_named(small_state):
    state = {**small_state, "encoder.model.0.conv.conv.weight_g": torch.ones(8, 1, 1)}
    with pytest.raises(MoshiCheckpointError, match=r"unexpected.*weight_g.*weight-normalized"):
        convert(state)


def test_wrong_shape_is_named(small_state):
    state = dict(small_state)
    state["quantizer.rvq_rest.output_proj.weight"] = torch.zeros(64, 16, 1)
    with pytest.raises(
        MoshiCheckpointError, match=r"rvq_rest\.output_proj\.weight.*\(64, 16, 1\).*\(64, 32, 1\)"
    ):
        convert(state)


def test_wrong_config_is_named(small_state):
    # SMALL_MIMI's weights read with kyutai's config (the default): the first mismatch says so.
    with pytest.raises(MoshiCheckpointError, match=r"has shape .*pass the MimiConfig"):
        convert_moshi_state_dict(small_state)


def test_wrong_head_count_is_named(small_state):
    config = MimiConfig(**{**SMALL_MIMI, "num_attention_heads": 4, "num_key_value_heads": 2})
    with pytest.raises(
        MoshiCheckpointError, match=r"in_projs\.0\.weight.*\(192, 64\).*\(128, 64\)"
    ):
        convert_moshi_state_dict(small_state, config)


def test_transformers_names_get_a_hint():
    state = MimiCodec.random(SMALL_MIMI).model.state_dict()
    with pytest.raises(MoshiCheckpointError, match="transformers' names"):
        convert(state)


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "mimi.safetensors"
    path.write_bytes(b"not safetensors")
    with pytest.raises(MoshiCheckpointError, match="not a readable .safetensors"):
        MimiCodec.load(path)
