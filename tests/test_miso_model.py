"""tts.miso's model and checkpoint loader against a plain full-recompute forward pass
(tests/miso_reference.py), on tiny random checkpoints written in the release format."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import miso_reference as ref
from tts.miso import (
    CheckpointError,
    MisoConfig,
    TransformerSizes,
    load_model,
    write_random_checkpoint,
)

TINY = MisoConfig(
    backbone=TransformerSizes(num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64,
                              intermediate_dim=128),
    decoder=TransformerSizes(num_layers=2, num_heads=4, num_kv_heads=1, embed_dim=32,
                             intermediate_dim=64),
    text_vocab_size=300,
    audio_vocab_size=51,
    audio_num_codebooks=8,
)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("miso") / "tiny", TINY, seed=3)


@pytest.fixture(scope="module")
def weights(tiny_checkpoint):
    return {k: v.float() for k, v in load_file(str(tiny_checkpoint / "model.safetensors")).items()}


def prompt(length: int, seed: int = 0):
    """Text frames then audio frames, as the generator builds them: (length, N+1)."""
    g = torch.Generator().manual_seed(seed)
    n = TINY.audio_num_codebooks
    tokens = torch.zeros(length, n + 1, dtype=torch.long)
    mask = torch.zeros(length, n + 1, dtype=torch.bool)
    text_len = max(1, length // 3)
    tokens[:text_len, -1] = torch.randint(0, TINY.text_vocab_size, (text_len,), generator=g)
    mask[:text_len, -1] = True
    tokens[text_len:, :-1] = torch.randint(0, TINY.audio_vocab_size, (length - text_len, n),
                                           generator=g)
    mask[text_len:, :-1] = True
    return tokens, mask


def audio_frame(codes: torch.Tensor):
    """A generated frame fed back: its codes, no text."""
    tokens = torch.cat([codes, torch.zeros(1, dtype=codes.dtype)]).long()
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[-1] = False
    return tokens, mask


class LogitRecorder:
    """Records the logits our model computes (codebook 0 head, then each decoder step)."""

    def __init__(self, model):
        self.logits: list[torch.Tensor] = []
        model.codebook0_head.register_forward_hook(lambda m, i, out: self.logits.append(out[0]))
        step = model._decoder_step

        def recording_step(*args):
            out = step(*args)
            self.logits.append(out[0])
            return out

        model._decoder_step = recording_step


def run_both(checkpoint, weights, prompt_len: int, steps: int):
    model = load_model(checkpoint, device="cpu", dtype=torch.float32)
    model.setup_caches(1)
    recorder = LogitRecorder(model)
    tokens, mask = prompt(prompt_len)
    history_tokens, history_mask = tokens, mask
    step_tokens, step_mask = tokens[None], mask[None]
    pos = torch.arange(prompt_len)[None]
    worst = 0.0
    for _ in range(steps):
        recorder.logits.clear()
        ours = model.generate_frame(step_tokens, step_mask, pos, temperature=1.0, topk=1)[0]
        expected_codes, expected_logits = ref.greedy_frame(weights, TINY, history_tokens,
                                                           history_mask)
        assert ours.tolist() == expected_codes
        for got, want in zip(recorder.logits, expected_logits, strict=True):
            worst = max(worst, float((got - want).abs().max()))
        frame_tokens, frame_mask = audio_frame(ours)
        history_tokens = torch.cat([history_tokens, frame_tokens[None]])
        history_mask = torch.cat([history_mask, frame_mask[None]])
        step_tokens, step_mask = frame_tokens[None, None], frame_mask[None, None]
        pos = pos[:, -1:] + 1
    return worst


def test_greedy_frames_and_logits_match_full_recompute(tiny_checkpoint, weights):
    worst = run_both(tiny_checkpoint, weights, prompt_len=24, steps=12)
    assert worst < 1e-5


def test_parity_holds_up_to_the_last_position(tiny_checkpoint, weights):
    # The prompt ends at position 2037; the last frame is predicted from position 2047.
    worst = run_both(tiny_checkpoint, weights, prompt_len=2038, steps=10)
    assert worst < 1e-5


def test_seeded_sampling_is_reproducible_and_seed_dependent(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    model.setup_caches(1)
    tokens, mask = prompt(10)

    def sample(seed):
        model.reset_caches()
        g = torch.Generator().manual_seed(seed)
        return model.generate_frame(tokens[None], mask[None], torch.arange(10)[None],
                                    temperature=0.9, topk=20, generator=g)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_first_k_codebooks_only(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    model.setup_caches(1)
    tokens, mask = prompt(10)
    pos = torch.arange(10)[None]
    full = model.generate_frame(tokens[None], mask[None], pos, 1.0, 1)
    model.reset_caches()
    partial = model.generate_frame(tokens[None], mask[None], pos, 1.0, 1, num_codebooks=3)
    assert partial.shape == full.shape
    assert torch.equal(partial[:, :3], full[:, :3])
    assert not partial[:, 3:].any()
    with pytest.raises(ValueError, match="num_codebooks"):
        model.generate_frame(tokens[None], mask[None], pos, 1.0, 1, num_codebooks=0)


def test_bf16_checkpoint_loads_in_bf16(tiny_checkpoint):
    model = load_model(tiny_checkpoint, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    model.setup_caches(2)
    tokens, mask = prompt(6)
    codes = model.generate_frame(tokens[None].expand(2, -1, -1), mask[None].expand(2, -1, -1),
                                 torch.arange(6)[None].expand(2, -1), 1.0, 1)
    assert codes.shape == (2, TINY.audio_num_codebooks)
    assert torch.equal(codes[0], codes[1])


def test_known_flavor_names_resolve(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "backbone_flavor": "llama-1B", "decoder_flavor": "llama-100M",
        "text_vocab_size": 128256, "audio_vocab_size": 2051, "audio_num_codebooks": 32}))
    from tts.miso.checkpoint import read_config

    config = read_config(tmp_path)
    assert (config.backbone.num_layers, config.backbone.embed_dim) == (16, 2048)
    assert (config.decoder.num_kv_heads, config.decoder.intermediate_dim) == (2, 8192)


def copy_checkpoint(src, dst, edit_tensors=None, edit_config=None):
    dst.mkdir()
    tensors = load_file(str(src / "model.safetensors"))
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    if edit_config:
        edit_config(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_missing_and_unexpected_keys_are_named(tiny_checkpoint, tmp_path):
    def edit(t):
        del t["backbone.layers.1.mlp.w3.weight"]
        t["backbone.layers.0.attn.bogus.weight"] = torch.zeros(2)

    broken = copy_checkpoint(tiny_checkpoint, tmp_path / "broken", edit_tensors=edit)
    with pytest.raises(CheckpointError) as err:
        load_model(broken)
    assert "missing 1 key(s): backbone.layers.1.mlp.w3.weight" in str(err.value)
    assert "unexpected 1 key(s): backbone.layers.0.attn.bogus.weight" in str(err.value)


def test_wrong_sizes_in_config_are_reported(tiny_checkpoint, tmp_path):
    def edit(c):
        c["decoder_flavor"]["embed_dim"] = 48

    broken = copy_checkpoint(tiny_checkpoint, tmp_path / "broken", edit_config=edit)
    with pytest.raises(CheckpointError, match="has shape"):
        load_model(broken)


@pytest.mark.parametrize("config, message", [
    ({"backbone_flavor": "llama-9B", "decoder_flavor": "llama-100M"}, "unknown flavor"),
    ({"decoder_flavor": "llama-100M"}, "missing backbone_flavor"),
    ({"backbone_flavor": {"num_layers": 1}, "decoder_flavor": "llama-100M"}, "backbone_flavor"),
    ({"backbone_flavor": {"num_layers": 1, "num_heads": 3, "num_kv_heads": 1, "embed_dim": 64,
                          "intermediate_dim": 8}, "decoder_flavor": "llama-100M"}, "divisible"),
])
def test_bad_config_is_refused(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


def test_missing_or_unreadable_files(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)
    write_random_checkpoint(tmp_path / "ok", TINY)
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path / "ok")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="MisoLabs/NoSuchModel"):
        load_model("MisoLabs/NoSuchModel")


def test_masks_saved_by_the_reference_after_setup_caches_are_accepted(tiny_checkpoint, tmp_path):
    # The reference registers its causal masks as persistent buffers in setup_caches, so a
    # state dict saved after it has them; they are derived, not weights.
    def edit(t):
        t["backbone_causal_mask"] = torch.ones(4, 4, dtype=torch.bool).tril()
        t["decoder_causal_mask"] = torch.ones(4, 4, dtype=torch.bool).tril()

    with_masks = copy_checkpoint(tiny_checkpoint, tmp_path / "masks", edit_tensors=edit)
    assert load_model(with_masks).config == TINY


def test_compiled_decoder_step_gives_the_same_frames(tiny_checkpoint):
    eager, compiled = load_model(tiny_checkpoint), load_model(tiny_checkpoint)
    compiled.compile_decoder_step()
    tokens, mask = prompt(8)
    frames = []
    for model in (eager, compiled):
        model.setup_caches(1)
        step_tokens, step_mask, pos = tokens[None], mask[None], torch.arange(8)[None]
        out = []
        for _ in range(3):
            frame = model.generate_frame(step_tokens, step_mask, pos, 1.0, 1)[0]
            out.append(frame)
            frame_tokens, frame_mask = audio_frame(frame)
            step_tokens, step_mask = frame_tokens[None, None], frame_mask[None, None]
            pos = pos[:, -1:] + 1
        frames.append(torch.stack(out))
    assert torch.equal(frames[0], frames[1])


def test_sharded_checkpoint_loads(tiny_checkpoint, tmp_path):
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    tensors = load_file(str(tiny_checkpoint / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(sharded / file))
        weight_map.update(dict.fromkeys(shard_names, file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (sharded / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    whole, split = load_model(tiny_checkpoint), load_model(sharded)
    for (name, a), (_, b) in zip(whole.state_dict().items(), split.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
