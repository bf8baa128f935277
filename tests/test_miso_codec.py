"""The Mimi codec wrapper: shapes, input checks, loading, and streaming decode == one-shot.

Runs on random weights (no download): a small config for speed, plus one short check of the
real, full-size architecture.
"""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from tests.miso_setup import SMALL_MIMI
from tts.miso.codec import CodecNotFoundError, MimiCodec

SMALL = SMALL_MIMI
FRAMES = 24
CHUNKINGS = {
    "1-at-a-time": [1] * FRAMES,
    "2-at-a-time": [2] * (FRAMES // 2),
    "uneven": [3, 1, 5, 2, 7, 1, 4, 1],
    "big-then-small": [17, 1, 1, 5],
    "all-at-once": [FRAMES],
}


# Tiny tensors: a second torch thread costs more than it saves (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def codec() -> MimiCodec:
    return MimiCodec.random(SMALL)


@pytest.fixture(scope="module")
def codes(codec) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, codec.codebook_size, (codec.num_codebooks, FRAMES), generator=generator)


@pytest.fixture(scope="module")
def reference(codec, codes) -> torch.Tensor:
    """The one-shot decode of ``codes``, which streaming must reproduce."""
    return codec.decode(codes)


def stream(codec: MimiCodec, codes: torch.Tensor, chunk_sizes: list[int]) -> list[torch.Tensor]:
    assert sum(chunk_sizes) == codes.shape[1]
    decoder = codec.streaming_decoder()
    pieces, start = [], 0
    for size in chunk_sizes:
        pieces.append(decoder.decode(codes[:, start : start + size]))
        start += size
    assert decoder.frames_decoded == codes.shape[1]
    return pieces


def max_error(audio: torch.Tensor, reference: torch.Tensor) -> float:
    """Max abs difference, relative to the reference's peak when that is above 1.

    Random weights decode to peaks of ~30, not the [-1, 1] of real speech; float32 rounding
    is relative, so this is the 1e-4 bound a real codec's audio would be held to.
    """
    peak = max(1.0, reference.abs().max().item())
    return (audio - reference).abs().max().item() / peak


def test_geometry(codec):
    assert codec.sample_rate == 24000
    assert codec.samples_per_frame == 1920
    assert codec.frame_rate == 12.5
    assert codec.num_codebooks == 32


def test_decode_length(codec, reference):
    assert reference.shape == (FRAMES * codec.samples_per_frame,)
    assert reference.dtype == torch.float32
    assert bool(torch.isfinite(reference).all())


@pytest.mark.parametrize("chunk_sizes", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_streaming_equals_one_shot(codec, codes, reference, chunk_sizes):
    pieces = stream(codec, codes, chunk_sizes)
    assert [len(p) for p in pieces] == [n * codec.samples_per_frame for n in chunk_sizes]
    assert max_error(torch.cat(pieces), reference) < 1e-4


def test_streaming_is_exact_in_float64(codes):
    # In float64 rounding vanishes, so any error left would be a flaw in the streaming itself.
    codec64 = MimiCodec.random(SMALL, dtype=torch.float64)
    codes = codes[:, :14]  # still more than twice the window
    reference = codec64.decode(codes)
    audio = torch.cat(stream(codec64, codes, [1, 3, 2, 5, 3]))
    assert (audio - reference).abs().max().item() < 1e-9


def test_sliding_window_is_exercised(codes, reference):
    # The same weights with a window longer than the test: if the output did not change, the
    # streaming tests above would not be testing how the key/value cache drops old steps.
    # (It is ~2e-3 here: ten times the streaming tolerance, and well above rounding.)
    unwindowed = MimiCodec.random({**SMALL, "sliding_window": 1000})
    assert max_error(unwindowed.decode(codes), reference) > 1e-3


def test_streaming_decoders_are_independent_and_leave_the_model_alone(codec, codes, reference):
    first, second = codec.streaming_decoder(), codec.streaming_decoder()
    first_pieces, second_pieces = [], []
    for start in range(0, FRAMES, 2):
        first_pieces.append(first.decode(codes[:, start : start + 2]))
        second_pieces.append(second.decode(codes[:, start : start + 2]))
    assert max_error(torch.cat(first_pieces), reference) < 1e-4
    assert max_error(torch.cat(second_pieces), reference) < 1e-4
    # One-shot decode after streaming is bit-for-bit what it was before.
    assert torch.equal(codec.decode(codes), reference)


def test_zero_frames_decode_to_nothing(codec, codes):
    assert codec.decode(codes[:, :0]).shape == (0,)
    decoder = codec.streaming_decoder()
    assert decoder.decode(codes[:, :0]).shape == (0,)
    assert decoder.frames_decoded == 0


@pytest.mark.parametrize("num_samples", [1, 1920, 1921, 5000, 1920 * 5])
def test_encode_shape(codec, num_samples):
    audio = 0.1 * torch.randn(num_samples, generator=torch.Generator().manual_seed(2))
    codes = codec.encode(audio)
    frames = -(-num_samples // codec.samples_per_frame)  # ceil: a partial frame is padded
    assert codes.shape == (32, frames)
    assert codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < codec.codebook_size
    assert frames == int(codec.model.get_encoded_length(torch.tensor(num_samples)))


def test_a_partial_last_frame_is_encoded_as_if_zero_padded_to_a_whole_frame(codec):
    """moshi's rule (the reference MisoTTS encodes its context with): a captured turn's last,
    partial frame gets the codes of that frame filled up with silence. transformers' own
    padding (inside each convolution) gives other codes there."""
    frame = codec.samples_per_frame
    audio = 0.1 * torch.randn(3 * frame + 700, generator=torch.Generator().manual_seed(4))
    padded = torch.cat([audio, torch.zeros(frame - 700)])
    assert torch.equal(codec.encode(audio), codec.encode(padded))
    # The frames before it do not depend on what follows them (a causal encoder).
    assert torch.equal(codec.encode(audio)[:, :3], codec.encode(audio[: 3 * frame]))


def test_encode_then_decode(codec):
    audio = 0.1 * torch.randn(3 * 1920 + 7, generator=torch.Generator().manual_seed(3))
    codes = codec.encode(audio)
    assert len(set(codes[0].tolist()) | set(codes[-1].tolist())) > 1  # not all code 0
    assert codec.decode(codes).shape == (4 * 1920,)


@pytest.mark.parametrize("k", [1, 2, 8])
def test_first_k_codebooks(codec, codes, reference, k):
    quantizer = codec.model.quantizer
    # The latent of K codebooks is the sum of the first K codebooks' centroids.
    codebooks = [
        layer.codebook
        for rvq in (
            quantizer.semantic_residual_vector_quantizer,
            quantizer.acoustic_residual_vector_quantizer,
        )
        for layer in rvq.layers
    ]
    with torch.inference_mode():
        latent = quantizer.decode(codes[None, :k])
        semantic = quantizer.num_semantic_quantizers
        by_hand = quantizer.semantic_residual_vector_quantizer.output_proj(
            sum(codebooks[i].embed[codes[i]] for i in range(min(k, semantic))).T[None]
        )
        if k > semantic:
            by_hand = by_hand + quantizer.acoustic_residual_vector_quantizer.output_proj(
                sum(codebooks[i].embed[codes[i]] for i in range(semantic, k)).T[None]
            )
    torch.testing.assert_close(latent, by_hand, rtol=1e-5, atol=1e-5)

    audio = codec.decode(codes[:k])
    assert audio.shape == (FRAMES * 1920,)
    assert max_error(audio, reference) > 1e-3
    assert max_error(torch.cat(stream(codec, codes[:k], [5, 1, 18])), audio) < 1e-4


@pytest.mark.parametrize(
    "audio, problem",
    [
        (torch.zeros(2, 4000), "mono 1-D"),
        (torch.zeros(4000, 2), "mono 1-D"),
        (torch.zeros(()), "mono 1-D"),
        (torch.zeros(0), "empty"),
        (torch.tensor([0.0, float("nan"), 0.1]), "NaN"),
        (torch.tensor([0.0, float("inf")]), "inf"),
        (torch.zeros(4000, dtype=torch.int16), "float"),
    ],
    ids=["stereo-channels-first", "stereo-channels-last", "scalar", "empty", "nan", "inf", "int"],
)
def test_encode_rejects_bad_audio(codec, audio, problem):
    with pytest.raises(ValueError, match=problem):
        codec.encode(audio)


@pytest.mark.parametrize(
    "bad_codes, problem",
    [
        (torch.zeros(1, 32, 3, dtype=torch.long), "2-D"),
        (torch.zeros(33, 3, dtype=torch.long), "33 codebooks"),
        (torch.zeros(0, 3, dtype=torch.long), "0 codebooks"),
        (torch.full((32, 3), 256), r"\[0, 256\)"),
        (torch.full((32, 3), -1), r"\[0, 256\)"),
        (torch.zeros(32, 3), "integer"),
    ],
    ids=["3-D", "too-many-codebooks", "no-codebooks", "too-big", "negative", "float"],
)
def test_decode_rejects_bad_codes(codec, bad_codes, problem):
    with pytest.raises(ValueError, match=problem):
        codec.decode(bad_codes)
    with pytest.raises(ValueError, match=problem):
        codec.streaming_decoder().decode(bad_codes)


def test_too_many_codebooks_requested():
    with pytest.raises(ValueError, match=r"num_codebooks=33.*32 quantizers"):
        MimiCodec.random(SMALL, num_codebooks=33)


def test_random_is_deterministic(codes):
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = MimiCodec.random(SMALL, seed=5).decode(codes[:, :3])
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's RNG is left alone
    assert torch.equal(MimiCodec.random(SMALL, seed=5).decode(codes[:, :3]), first)
    assert not torch.equal(MimiCodec.random(SMALL, seed=6).decode(codes[:, :3]), first)


def test_load_round_trips_a_saved_model(codec, codes, reference, tmp_path):
    codec.model.save_pretrained(tmp_path / "mimi")
    loaded = MimiCodec.load(tmp_path / "mimi")
    assert loaded.samples_per_frame == 1920 and loaded.num_codebooks == 32
    torch.testing.assert_close(loaded.decode(codes), reference, rtol=0, atol=1e-6)
    audio = 0.1 * torch.randn(2 * 1920, generator=torch.Generator().manual_seed(4))
    assert torch.equal(loaded.encode(audio), codec.encode(audio))
    # Also as a plain string path, and with fewer codebooks.
    assert MimiCodec.load(str(tmp_path / "mimi"), num_codebooks=8).encode(audio).shape == (8, 2)
    with pytest.raises(ValueError, match=r"num_codebooks=33.*32 quantizers"):
        MimiCodec.load(tmp_path / "mimi", num_codebooks=33)


def test_load_missing_directory(tmp_path):
    missing = tmp_path / "no" / "such" / "mimi"
    with pytest.raises(CodecNotFoundError, match="kyutai/mimi") as caught:
        MimiCodec.load(missing)
    assert str(missing) in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)


def test_load_directory_without_model(tmp_path):
    with pytest.raises(CodecNotFoundError, match="config.json"):
        MimiCodec.load(tmp_path)


def test_load_hub_id_offline_and_not_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: set what it read, too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub_id = "kyutai/no-such-mimi-for-tests"
    with pytest.raises(CodecNotFoundError) as caught:
        MimiCodec.load(hub_id)
    message = str(caught.value)
    assert hub_id in message
    assert "Download kyutai/mimi" in message and "local directory" in message


def test_real_default_config():
    # kyutai/mimi's full-size architecture with random weights (~4 s to build on a laptop CPU).
    codec = MimiCodec.random()
    config = codec.model.config
    assert (config.sampling_rate, config.frame_rate, config.num_quantizers) == (24000, 12.5, 32)
    assert codec.samples_per_frame == config.frame_size == 1920
    assert codec.num_codebooks == 32
    codes = torch.randint(0, 2048, (32, 4), generator=torch.Generator().manual_seed(5))
    reference = codec.decode(codes)
    assert reference.shape == (4 * 1920,)
    assert max_error(torch.cat(stream(codec, codes, [1, 2, 1])), reference) < 1e-4
