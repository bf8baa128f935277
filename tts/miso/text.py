"""MisoTTS's text tokenizer: the Llama-3.2-1B tokenizer, loadable offline.

MisoTTS frames each text segment as ``f"[{speaker}] {text.lstrip()}"`` and tokenizes it with
the Llama 3.2 tokenizer, wrapping the ids in ``<|begin_of_text|>`` (128000) and
``<|end_of_text|>`` (128001). Sesame CSM-1B, whose checkpoint format MisoTTS shares, uses
the same tokenizer but frames as ``f"[{speaker}]{text}"``: no space, no stripping. A model
should get the framing its reference code uses, so the framing is a ``SegmentFormat``
chosen at load time, MisoTTS's by default.

The reference loads the tokenizer from the gated ``meta-llama/Llama-3.2-1B`` hub repo, which
a machine without a Hugging Face login (or without internet) cannot reach. The BPE itself is
the same in every Llama 3.x release, and Meta ships it in the ``llama-models`` PyPI package
as a tiktoken ranks file, so by default we read that file with tiktoken. A local
``tokenizer.json`` (through the ``tokenizers`` library) or a hub id (through transformers)
give the same ids.

User text is always encoded as plain text: a reply that happens to contain
``<|begin_of_text|>`` must not turn into a control token the model never saw mid-segment.
(The reference encodes through ``tokenizer.encode`` and would emit the special id there;
for ordinary text the two agree.)

Nothing here depends on Pipecat.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import operator
import os
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
DEFAULT_HUB_ID = "meta-llama/Llama-3.2-1B"

# Llama 3's BPE has 128,000 mergeable tokens; 256 special tokens follow them.
NUM_BASE_TOKENS = 128_000
NUM_SPECIAL_TOKENS = 256

# Llama 3's pre-tokenization pattern (llama_models/llama3/tokenizer.py, and the Split
# pre-tokenizer of every Llama 3.x tokenizer.json). It splits text into the pieces BPE
# runs on, so a different pattern gives different ids for the same BPE ranks.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

_INSTALL_HINT = "pip install --no-deps llama-models"
# Where a download of a Llama 3.x repo keeps each tokenizer format. tokenizer.json comes
# first: it is what the reference loads, and it names its own pattern and special tokens.
_DIRECTORY_CANDIDATES = ("tokenizer.json", "tokenizer.model", "original/tokenizer.model")


class TokenizerNotFoundError(FileNotFoundError):
    """No tokenizer could be found or fetched from the given source."""


_SEGMENT_FIELDS = frozenset({"speaker", "text"})


@dataclass(frozen=True)
class SegmentFormat:
    """How one segment's text is laid out before tokenizing: ``template`` is a
    ``str.format`` template with exactly the fields ``{speaker}`` (an int) and ``{text}``;
    ``lstrip_text`` strips leading whitespace from the text before it is inserted.

    The two go together because both are part of a model's expected input: MisoTTS
    (``MISO_SEGMENT_FORMAT``) puts a space after the speaker tag and strips the text, so
    " Hi" and "Hi" give the same ids and the tag is always followed by exactly one space;
    Sesame CSM-1B (``CSM_SEGMENT_FORMAT``) glues the text to the tag as given, so any
    leading space of the text is the only separator and must be kept. A template alone
    cannot say which of these it means, hence the explicit flag rather than a bare string.
    """

    template: str
    lstrip_text: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.template, str):
            raise TypeError(
                f"segment template must be a str, got {type(self.template).__name__}"
            )
        if not isinstance(self.lstrip_text, bool):
            raise TypeError(f"lstrip_text must be a bool, got {self.lstrip_text!r}")
        problem = _template_problem(self.template)
        if problem:
            raise ValueError(f"bad segment template {self.template!r}: {problem}")

    def render(self, text: str, speaker: int) -> str:
        """The segment's text as the model expects it (before BOS/EOS are added)."""
        if self.lstrip_text:
            text = text.lstrip()
        return self.template.format(speaker=speaker, text=text)


def _template_problem(template: str) -> str | None:
    """What is wrong with a segment template, or None."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template)
                  if field is not None]
    except ValueError as exc:  # unmatched braces
        return str(exc)
    unknown = sorted({field for field in fields if field not in _SEGMENT_FIELDS})
    if unknown:
        # Positional "{}", other names, and attribute/index access ("{text.upper}") alike.
        return f"fields may only be {{speaker}} and {{text}}, not {unknown}"
    missing = sorted(_SEGMENT_FIELDS.difference(fields))
    if missing:
        return f"missing field {', '.join('{' + name + '}' for name in missing)}"
    if fields.count("text") > 1:
        return "{text} must appear once"
    try:
        template.format(speaker=0, text="x")
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        # A spec that cannot apply ("{text:d}"), a bad conversion ("{text!x}"), or a field
        # nested in a spec ("{text:{width}}"), which parse() does not list.
        return f"{type(exc).__name__}: {exc}"
    return None


# MisoTTS: f"[{speaker}] {text.lstrip()}".
MISO_SEGMENT_FORMAT = SegmentFormat("[{speaker}] {text}", lstrip_text=True)
# Sesame CSM-1B: f"[{speaker}]{text}".
CSM_SEGMENT_FORMAT = SegmentFormat("[{speaker}]{text}", lstrip_text=False)


def llama3_special_tokens() -> list[str]:
    """Names of Llama 3.2's 256 special tokens, in id order from 128000 (as in
    llama_models). Only BOS and EOS matter to MisoTTS; the rest are named so ids decode."""
    named = [
        BOS_TOKEN,
        EOS_TOKEN,
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|step_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
        "<|image|>",
    ]
    reserved = [
        f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_SPECIAL_TOKENS - len(named))
    ]
    return named + reserved


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """A tiktoken BPE file (one ``base64-token rank`` pair per line) as {token: rank}.

    Parsed here rather than with ``tiktoken.load``: that helper copies every file it reads
    into a temp-dir cache keyed by path, so a replaced file at the same path could be
    served stale. A malformed line is an error, not a skipped line: a missing rank would
    silently shift ids.
    """
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise TokenizerNotFoundError(f"cannot read tokenizer file {str(path)!r}: {exc}") from None
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank_text = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank_text)
        except (ValueError, binascii.Error):
            raise ValueError(
                f"{str(path)!r} line {number} is not 'base64-token rank': not a tiktoken BPE "
                f"file such as llama-models' llama3/tokenizer.model (a SentencePiece "
                f".model from Llama 1/2 will not do)"
            ) from None
    return ranks


class TextTokenizer:
    """Turns one text segment into the model's token ids: BOS, the segment laid out by
    ``segment_format`` (MisoTTS's ``[speaker] text`` by default), EOS.

    Build it with ``TextTokenizer.load``. It holds no per-call state, and both backends
    (tiktoken, tokenizers) encode thread-safely, so one instance can serve every session.
    """

    def __init__(
        self,
        encode_plain: Callable[[str], list[int]],
        *,
        bos_id: int,
        eos_id: int,
        vocab_size: int,
        special_ids: Iterable[int],
        source: str,
        segment_format: SegmentFormat = MISO_SEGMENT_FORMAT,
    ) -> None:
        # encode_plain must treat special-token text as ordinary text and add no BOS/EOS.
        self._encode_plain = encode_plain
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.vocab_size = vocab_size
        self._special_ids = frozenset(special_ids)
        self.source = source
        self.segment_format = _check_segment_format(segment_format)

    def __repr__(self) -> str:
        return (
            f"TextTokenizer(source={self.source!r}, vocab_size={self.vocab_size}, "
            f"segment_format={self.segment_format!r})"
        )

    def encode_segment(self, text: str, speaker: int) -> list[int]:
        """``[bos] + encode(segment_format.render(text, speaker)) + [eos]``, as the model
        frames every segment (context and the one to speak alike); by default MisoTTS's
        ``f"[{speaker}] {text.lstrip()}"``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text.strip():
            # "[0] " alone would make the model speak with nothing to say.
            raise ValueError(f"text is empty or only whitespace: {text!r}")
        speaker = _speaker_index(speaker)
        body = self._encode_plain(self.segment_format.render(text, speaker))
        if not self._special_ids.isdisjoint(body):
            # Both backends are configured to make this impossible; a tokenizer file with
            # unusual added tokens could still break it, and the model must never see it.
            raise RuntimeError(
                f"tokenizer {self.source!r} produced special-token ids for plain text"
            )
        return [self.bos_id, *body, self.eos_id]

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        source: str | os.PathLike | None = None,
        segment_format: SegmentFormat = MISO_SEGMENT_FORMAT,
    ) -> TextTokenizer:
        """The tokenizer from ``source``, framing segments with ``segment_format``
        (``MISO_SEGMENT_FORMAT``, or ``CSM_SEGMENT_FORMAT`` for a Sesame CSM-1B checkpoint):

        * None: the ``llama-models`` package's llama3/tokenizer.model (offline);
        * a ``tokenizer.model`` (tiktoken) or ``tokenizer.json`` (Hugging Face) file, or a
          directory holding one (e.g. a download of Llama-3.2-1B or of MisoTTS);
        * a Hugging Face hub id such as ``meta-llama/Llama-3.2-1B``, via transformers:
          from its cache, else from the hub when online (the Meta repos are gated).
        """
        # Checked first, so a bad format fails before any file is read or hub call made.
        segment_format = _check_segment_format(segment_format)
        if source is None:
            return cls.from_tiktoken_file(packaged_tokenizer_model(), segment_format)
        path = Path(source).expanduser()
        if path.is_dir():
            return cls._from_file(_tokenizer_file_in(path), segment_format)
        if path.is_file():
            return cls._from_file(path, segment_format)
        if path.exists() or _looks_like_path(source):
            raise TokenizerNotFoundError(f"tokenizer not found: {str(source)!r} does not exist")
        return cls.from_hub(str(source), segment_format)

    @classmethod
    def _from_file(cls, path: Path, segment_format: SegmentFormat) -> TextTokenizer:
        if path.suffix == ".json":
            return cls.from_tokenizer_json(path, segment_format)
        return cls.from_tiktoken_file(path, segment_format)

    @classmethod
    def from_tiktoken_file(
        cls,
        path: str | os.PathLike,
        segment_format: SegmentFormat = MISO_SEGMENT_FORMAT,
    ) -> TextTokenizer:
        """A Llama 3 ``tokenizer.model`` (tiktoken BPE ranks), with Llama 3's pattern and
        special tokens: the file itself holds neither, so they are Llama 3's by fiat."""
        import tiktoken

        segment_format = _check_segment_format(segment_format)
        ranks = read_tiktoken_ranks(path)
        # Special ids are assigned right after the ranks, so any other rank layout (a Llama
        # 4 file, a GPT file) would put BOS/EOS at the wrong ids: refuse it.
        if len(ranks) != NUM_BASE_TOKENS or set(ranks.values()) != set(range(NUM_BASE_TOKENS)):
            raise ValueError(
                f"{str(path)!r} has {len(ranks)} BPE ranks; a Llama 3 tokenizer.model has "
                f"exactly {NUM_BASE_TOKENS} (ranks 0..{NUM_BASE_TOKENS - 1})"
            )
        specials = {
            name: NUM_BASE_TOKENS + i for i, name in enumerate(llama3_special_tokens())
        }
        encoding = tiktoken.Encoding(
            name=f"llama3:{path}",
            pat_str=LLAMA3_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=specials,
        )
        return cls(
            # encode_ordinary never matches special-token text, unlike encode(), which
            # raises on it by default.
            encoding.encode_ordinary,
            bos_id=specials[BOS_TOKEN],
            eos_id=specials[EOS_TOKEN],
            vocab_size=encoding.n_vocab,
            special_ids=specials.values(),
            source=str(path),
            segment_format=segment_format,
        )

    @classmethod
    def from_tokenizer_json(
        cls,
        path: str | os.PathLike,
        segment_format: SegmentFormat = MISO_SEGMENT_FORMAT,
    ) -> TextTokenizer:
        """A Hugging Face ``tokenizer.json`` (e.g. Llama-3.2-1B's), via ``tokenizers``."""
        from tokenizers import Tokenizer

        segment_format = _check_segment_format(segment_format)
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 (tokenizers raises bare Exception on bad JSON)
            raise ValueError(f"{str(path)!r} is not a readable tokenizer.json: {exc}") from None
        return cls._from_hf_tokenizer(tokenizer, source=str(path), segment_format=segment_format)

    @classmethod
    def from_hub(
        cls,
        repo_id: str = DEFAULT_HUB_ID,
        segment_format: SegmentFormat = MISO_SEGMENT_FORMAT,
    ) -> TextTokenizer:
        """A hub repo's tokenizer via transformers' AutoTokenizer: the local cache first (no
        network wait), then the hub. Fails with a TokenizerNotFoundError saying what to do."""
        segment_format = _check_segment_format(segment_format)
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise TokenizerNotFoundError(
                f"loading tokenizer {repo_id!r} from the hub needs transformers; or use the "
                f"offline default (`{_INSTALL_HINT}`, then TextTokenizer.load())"
            ) from None
        try:
            hf_tokenizer = AutoTokenizer.from_pretrained(repo_id, local_files_only=True)
        except (OSError, ValueError):  # not cached (OSError) or a malformed id (ValueError)
            try:
                hf_tokenizer = AutoTokenizer.from_pretrained(repo_id)
            except (OSError, ValueError) as exc:
                # transformers reports offline, gated, missing and malformed alike.
                raise TokenizerNotFoundError(
                    f"tokenizer {repo_id!r} is not a local file or directory and could not "
                    f"be loaded from the Hugging Face hub or its cache ({type(exc).__name__}: "
                    f"{exc}). The meta-llama repos are gated (accept the license, then "
                    f"`hf auth login`). Offline, pass a tokenizer.json / tokenizer.model "
                    f"path, or None after `{_INSTALL_HINT}`."
                ) from None
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                f"tokenizer {repo_id!r} has no fast (tokenizers) backend; Llama 3's does"
            )
        return cls._from_hf_tokenizer(backend, source=repo_id, segment_format=segment_format)

    @classmethod
    def _from_hf_tokenizer(
        cls, tokenizer, *, source: str, segment_format: SegmentFormat
    ) -> TextTokenizer:
        """Wrap a ``tokenizers.Tokenizer``, which this takes over (it is reconfigured)."""
        bos_id = tokenizer.token_to_id(BOS_TOKEN)
        eos_id = tokenizer.token_to_id(EOS_TOKEN)
        if bos_id is None or eos_id is None:
            raise ValueError(
                f"tokenizer {source!r} has no {BOS_TOKEN} / {EOS_TOKEN} token: not a Llama 3 "
                f"tokenizer"
            )
        # By default tokenizers matches added tokens in the input before BPE, so typed
        # "<|begin_of_text|>" would become id 128000; this makes special tokens plain text.
        tokenizer.encode_special_tokens = True
        special_ids = [
            token_id
            for token_id, added in tokenizer.get_added_tokens_decoder().items()
            if added.special
        ]

        def encode_plain(text: str) -> list[int]:
            # add_special_tokens=False: skip the file's post-processor (the 3.2 one adds
            # only BOS; the 3.0 one none); framing is done in encode_segment.
            return tokenizer.encode(text, add_special_tokens=False).ids

        return cls(
            encode_plain,
            bos_id=bos_id,
            eos_id=eos_id,
            vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
            special_ids=special_ids,
            source=source,
            segment_format=segment_format,
        )


def packaged_tokenizer_model() -> Path:
    """Path of the llama3 tokenizer.model inside the installed ``llama-models`` package."""
    # Only the data file is needed: find_spec locates the package without running any of
    # its code (much of llama_models needs torch, pydantic and more, which --no-deps skips).
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerNotFoundError(
            f"the Llama 3 tokenizer ships in the llama-models package, which is not "
            f"installed: `{_INSTALL_HINT}` (or pass a tokenizer.json / tokenizer.model path)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise TokenizerNotFoundError(
            f"llama-models is installed but has no {path}; reinstall it: `{_INSTALL_HINT}`"
        )
    return path


def _tokenizer_file_in(directory: Path) -> Path:
    for name in _DIRECTORY_CANDIDATES:
        if (directory / name).is_file():
            return directory / name
    raise TokenizerNotFoundError(
        f"tokenizer directory {str(directory)!r} holds none of {', '.join(_DIRECTORY_CANDIDATES)}"
    )


def _looks_like_path(source: str | os.PathLike) -> bool:
    if not isinstance(source, str):
        return True  # a PathLike is a path even when it does not exist
    # Hub ids are "name" or "owner/name"; anything rooted, deeper or with a tokenizer file
    # suffix is a path that is missing, and is reported as such rather than sent to the hub.
    return (
        source.startswith(("/", "./", "../", "~", "\\"))
        or source.count("/") > 1
        or "\\" in source
        or (len(source) > 1 and source[1] == ":")  # Windows drive letter
        or source.endswith((".json", ".model"))
    )


def _check_segment_format(segment_format: object) -> SegmentFormat:
    if isinstance(segment_format, SegmentFormat):
        return segment_format
    if isinstance(segment_format, str):
        # A bare template does not say whether the text is stripped, which changes ids.
        raise TypeError(
            f"segment_format must be a SegmentFormat, got the string {segment_format!r}: use "
            f"MISO_SEGMENT_FORMAT, CSM_SEGMENT_FORMAT or SegmentFormat(template, lstrip_text=...)"
        )
    raise TypeError(f"segment_format must be a SegmentFormat, got {type(segment_format).__name__}")


def _speaker_index(speaker: object) -> int:
    # operator.index accepts numpy integers from configs but not floats or strings; bool is
    # an int subclass, but True as a speaker is a bug, not speaker 1.
    try:
        if isinstance(speaker, bool):
            raise TypeError
        value = operator.index(speaker)
    except TypeError:
        raise ValueError(f"speaker must be a non-negative int, got {speaker!r}") from None
    if value < 0:
        raise ValueError(f"speaker must be a non-negative int, got {speaker!r}")
    return value
