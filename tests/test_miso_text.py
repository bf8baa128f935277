"""tts.miso.text: the offline Llama 3 tokenizer (tiktoken over llama-models' tokenizer.model)
against a Hugging Face tokenizer.json run by `tokenizers` (converted here from the same
tokenizer.model by transformers' TikTokenConverter, laid out like Llama 3.2's official file),
and against Meta's own llama_models Tokenizer, plus segment framing (MisoTTS's and Sesame
CSM's) and errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tts.miso import text as miso_text
from tts.miso.text import (
    CSM_SEGMENT_FORMAT,
    LLAMA3_PATTERN,
    MISO_SEGMENT_FORMAT,
    SegmentFormat,
    TextTokenizer,
    TokenizerNotFoundError,
    llama3_special_tokens,
    packaged_tokenizer_model,
    read_tiktoken_ranks,
)

BOS, EOS = 128000, 128001

# Some of Llama 3's vocab (588 tokens, many Vietnamese, Czech and Turkish words) cannot be
# built through its merges; only BPE with ignore_merges (a pre-token found whole in the vocab
# is taken as is, as tiktoken does) gives tiktoken's ids for them. test_ignore_merges_matters
# checks that this sample still shows the difference.
VIETNAMESE = "Vi\u1ec7t Nam: vi\u1ec7c h\u1ee3p nhi\u1ec1u \u0111i\u1ec1u."

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
    VIETNAMESE,  # words that need ignore_merges
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


def _convert_tiktoken_model(model_path: Path):
    """Llama 3's tokenizer.json (as a ``tokenizers.Tokenizer``) rebuilt from its tiktoken
    tokenizer.model, as Hugging Face's conversion did: byte-level BPE with merges derived
    from the ranks, the Llama 3 split pattern, the 256 special tokens, and the Llama 3.2
    post-processor (which adds BOS)."""
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    # The converter reads the ranks with tiktoken's own loader (a parse independent of
    # read_tiktoken_ranks); an empty cache dir stops it copying the file into /tmp.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", "")
        tokenizer = TikTokenConverter(
            vocab_file=str(model_path),
            pattern=LLAMA3_PATTERN,
            extra_special_tokens=llama3_special_tokens(),
        ).converted()
    # Llama 3's tokenizer.json has "ignore_merges": true, and ids only match tiktoken with
    # it. The converter sets it (transformers 5.23); set here too, so a version that did
    # not could not make the file a different tokenizer from the official one.
    tokenizer.model.ignore_merges = True
    bos = llama3_special_tokens()[0]
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, BOS)]
        ),
    ])
    return tokenizer


@pytest.fixture(scope="session")
def converted():
    """The converted ``tokenizers.Tokenizer``; tests that change it must restore it."""
    return _convert_tiktoken_model(packaged_tokenizer_model())


@pytest.fixture(scope="session")
def hf_json(converted, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama3-tokenizer-json") / "tokenizer.json"
    converted.save(str(path))
    return path


@pytest.fixture
def tiny_hf():
    """A tokenizers.Tokenizer with only BOS and EOS, where only the plumbing is under test
    (loading the real tokenizer.json takes about a second)."""
    from tokenizers import Tokenizer, models

    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tokenizer.add_special_tokens(llama3_special_tokens()[:2])
    return tokenizer


@pytest.fixture(scope="module")
def tik() -> TextTokenizer:
    return TextTokenizer.load()


@pytest.fixture(scope="module")
def tik_csm() -> TextTokenizer:
    return TextTokenizer.load(segment_format=CSM_SEGMENT_FORMAT)


@pytest.fixture(scope="module")
def hf(hf_json) -> TextTokenizer:
    return TextTokenizer.load(hf_json)


@pytest.fixture(scope="module")
def meta():
    """Meta's own Tokenizer from llama_models, a third opinion."""
    from llama_models.llama3.tokenizer import Tokenizer

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
    assert spec["model"]["type"] == "BPE" and spec["model"]["ignore_merges"] is True
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


def test_ignore_merges_matters(converted, tik):
    """Without ignore_merges the same tokenizer splits VIETNAMESE differently, so the
    agreement tests below would catch a converted file that lacked it."""
    expected = _plain(tik, VIETNAMESE)
    assert converted.encode(VIETNAMESE, add_special_tokens=False).ids == expected
    converted.model.ignore_merges = False
    try:
        without = converted.encode(VIETNAMESE, add_special_tokens=False).ids
    finally:
        converted.model.ignore_merges = True
    assert without != expected


def test_post_processor_is_skipped(converted, hf):
    # The file's post-processor adds BOS (as Llama 3.2's does); framing must not double it.
    assert converted.encode("Hi.").ids == [BOS, *_plain(hf, "Hi.")]
    assert hf.encode_segment("Hi.", 0).count(BOS) == 1


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


@pytest.mark.parametrize("text", [s for s in SAMPLES if s.strip()])
def test_csm_segment_ids_agree(tik_csm, hf, meta, text):
    ids = tik_csm.encode_segment(text, 1)
    assert ids == [BOS, *_plain(hf, f"[1]{text}"), EOS]
    assert ids == meta.encode(f"[1]{text}", bos=True, eos=True)


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


def test_default_format_is_misotts(tik):
    assert tik.segment_format is MISO_SEGMENT_FORMAT
    assert MISO_SEGMENT_FORMAT.render(" \tHello ", 1) == "[1] Hello "
    assert tik.encode_segment(" Hello", 1) == [BOS, *_plain(tik, "[1] Hello"), EOS]


def test_csm_framing(tik, tik_csm):
    csm = tik_csm
    assert csm.segment_format is CSM_SEGMENT_FORMAT
    assert csm.encode_segment("Hello", 1) == [BOS, *_plain(tik, "[1]Hello"), EOS]
    # "[", "1", "]", "Hello" against MisoTTS's "[", "1", "]", " Hello"
    assert csm.encode_segment("Hello", 1) == [BOS, 58, 16, 60, 9906, EOS]
    assert tik.encode_segment("Hello", 1) == [BOS, 58, 16, 60, 22691, EOS]
    # CSM keeps the text as given: a leading space is its only separator.
    assert csm.encode_segment(" Hello", 1) == [BOS, *_plain(tik, "[1] Hello"), EOS]
    assert csm.encode_segment("\tHello ", 1) == [BOS, *_plain(tik, "[1]\tHello "), EOS]
    with pytest.raises(ValueError, match="empty"):
        csm.encode_segment("   ", 1)


def test_segment_format_reaches_every_constructor(tmp_path, monkeypatch, tik, tiny_hf):
    import transformers

    tiktoken_dir = tmp_path / "tiktoken"
    tiktoken_dir.mkdir()
    shutil.copy(tik.source, tiktoken_dir / "tokenizer.model")
    json_dir = tmp_path / "json"
    json_dir.mkdir()
    tiny_hf.save(str(json_dir / "tokenizer.json"))
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained",
        lambda name, **kwargs: type("Fast", (), {"backend_tokenizer": tiny_hf})(),
    )
    # load(model dir) runs from_tiktoken_file; load(None) is the tik_csm fixture.
    built = {
        "load(model dir)": TextTokenizer.load(tiktoken_dir, segment_format=CSM_SEGMENT_FORMAT),
        "load(json dir)": TextTokenizer.load(json_dir, segment_format=CSM_SEGMENT_FORMAT),
        "load(hub id)": TextTokenizer.load("someone/csm-1b", segment_format=CSM_SEGMENT_FORMAT),
        "from_tokenizer_json": TextTokenizer.from_tokenizer_json(
            json_dir / "tokenizer.json", CSM_SEGMENT_FORMAT),
        "from_hub": TextTokenizer.from_hub("someone/csm-1b", CSM_SEGMENT_FORMAT),
    }
    for how, tokenizer in built.items():
        assert tokenizer.segment_format is CSM_SEGMENT_FORMAT, how
    assert built["load(hub id)"].source == "someone/csm-1b"
    expected = [BOS, *_plain(tik, "[2]Hi."), EOS]
    assert built["load(model dir)"].encode_segment("Hi.", 2) == expected
    assert "segment_format=SegmentFormat(template='[{speaker}]{text}'" in repr(
        built["load(model dir)"])


def test_bad_segment_format_fails_before_loading(monkeypatch, tmp_path):
    # Nothing is read (or fetched) when the format is wrong.
    monkeypatch.setattr(miso_text, "packaged_tokenizer_model", pytest.fail)
    monkeypatch.setattr(TextTokenizer, "from_hub", pytest.fail)
    for source in (None, tmp_path, "meta-llama/Llama-3.2-1B"):
        with pytest.raises(TypeError, match="SegmentFormat"):
            TextTokenizer.load(source, segment_format="[{speaker}]{text}")


def test_custom_segment_format(tik):
    custom = SegmentFormat("<{speaker:02d}>: {text}", lstrip_text=True)
    assert custom.render("  Hi.", 3) == "<03>: Hi."
    tokenizer = TextTokenizer(
        tik._encode_plain, bos_id=BOS, eos_id=EOS, vocab_size=tik.vocab_size,
        special_ids=range(BOS, tik.vocab_size), source="test", segment_format=custom,
    )
    assert tokenizer.encode_segment(" Hi.", 3) == [BOS, *_plain(tik, "<03>: Hi."), EOS]
    assert SegmentFormat("{speaker}{{literal braces}}{text}").render("x", 0) == "0{literal braces}x"


@pytest.mark.parametrize("template", [
    "[{speaker}]",  # no text
    "{text}",  # no speaker
    "",
    "[{speaker}] {text} {emotion}",  # an unknown field
    "[{}] {text}",  # positional
    "[{0}] {text}",
    "[{speaker}] {text.upper}",  # attribute access
    "[{speaker}] {text[0]}",
    "[{speaker] {text}",  # unbalanced
    "[{speaker}] {text}}",
    "[{speaker}] {text:d}",  # a spec that cannot apply to str
    "[{speaker}] {text!z}",  # an unknown conversion
    "[{speaker}] {text:{width}}",  # a nested field
    "[{speaker}] {text} {text}",  # text twice
])
def test_bad_template_is_refused(template):
    with pytest.raises(ValueError, match=re.escape(repr(template))):
        SegmentFormat(template)


def test_segment_format_must_be_a_segment_format():
    # A bare string would leave open whether the text is stripped, which changes the ids.
    with pytest.raises(TypeError, match="use MISO_SEGMENT_FORMAT, CSM_SEGMENT_FORMAT"):
        TextTokenizer.load(segment_format="[{speaker}]{text}")
    with pytest.raises(TypeError, match="SegmentFormat"):
        TextTokenizer.load(segment_format=None)
    with pytest.raises(TypeError, match="template must be a str"):
        SegmentFormat(b"[{speaker}]{text}")
    with pytest.raises(TypeError, match="lstrip_text must be a bool"):
        SegmentFormat("[{speaker}]{text}", lstrip_text="yes")


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
    import transformers

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
