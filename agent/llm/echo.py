"""Does a reply repeat what the person said, or what it said itself before?

Used by the LLM service to keep echoed exchanges out of the prompt (a small model that
sees itself echo once echoes every turn after) and by the benchmarks to score replies.
Text is compared after ``clean``: lower case, no punctuation, digits as words.
"""

from __future__ import annotations

import functools
import re

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _int_words(n: int) -> str:
    """English words for a non-negative integer, as num2words writes them (no hyphens)."""
    try:
        from num2words import num2words

        return num2words(n)
    except ImportError:
        pass
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in (
        (10**9, "billion"),
        (10**6, "million"),
        (1000, "thousand"),
        (100, "hundred"),
    ):
        if n >= size:
            head, rest = divmod(n, size)
            words = f"{_int_words(head)} {name}"
            if rest:
                words += (" and " if rest < 100 else ", ") + _int_words(rest)
            return words
    return str(n)


def _number(match: re.Match) -> str:
    digits = match.group(1).replace(",", "")
    if match.group(2):  # a decimal part: "3.5" -> "three point five"
        return f" {_int_words(int(digits))} point {' '.join(_int_words(int(d)) for d in match.group(2))} "
    return f" {_int_words(int(digits))} "


# The prompt is built again from the whole conversation several times a turn, and its
# echo and repeat checks clean every past message each time (45,000 calls for the ten
# prompts of a 62-turn call): the same few hundred texts.
@functools.lru_cache(maxsize=4096)
def clean(text: str) -> str:
    """Lower case, no punctuation, digits as words ("7" and "seven" are the same word).

    Thousands separators are dropped ("1,000" -> "one thousand"), a decimal is read out
    ("3.5" -> "three point five"), ordinal suffixes are dropped ("21st" -> "twenty one"),
    and markdown and hyphens become spaces. Apostrophes stay ("don't").
    """
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"(\d[\d,]*\d|\d)(?:\.(\d+))?(?:st|nd|rd|th)?", _number, text)
    text = text.replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not apostrophes
    return " ".join(text.split())


STOPWORDS = frozenset(
    """a an the and or but so of to in on at for from with by about as into over off up out
    is am are was were be been being do does did have has had will would can could should
    i i'm im i've i'll i'd me my mine we we're our us you you're your yours he she it it's
    its they them their this that these those there here what which who just really very
    too also again some somewhere not no oh wow well going gonna she he's she's they're
    that's what's there's let's""".split()
)


def _stem(word: str) -> str:
    """A light suffix strip, enough to match "visiting"/"visit" and "runs"/"run"."""
    word = re.sub(r"'(s|re|ll|ve|d|m)$", "", word)
    for suffix, keep in (("ing", 4), ("ed", 4), ("es", 4), ("s", 3)):
        if word.endswith(suffix) and len(word) - len(suffix) >= keep and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry its content: cleaned, stopwords (pronouns, articles,
    auxiliaries, "just", "really", "going") dropped, light-stemmed (``_stem``: "'s", "-ing",
    "-ed", "-es", "-s")."""
    return [_stem(w) for w in clean(text).split() if w not in STOPWORDS]


def is_echo(reply: str, said: str) -> bool:
    """Whether ``reply`` repeats ``said`` back instead of responding to it.

    An echo is either

    * a reply whose content words start with all of the statement's content words, in
      order ("Bobby ripped the ledger. ..." or "You just got back from a long run!"), or
    * a reply that contains >= 70 % of the statement's content words *and* whose own
      content words are at least half the statement's: it adds little of its own
      ("Oh no, Bobby ripped the ledger?" is an echo; "Oh no, why did Bobby rip the
      ledger? Was it important?" is not), or
    * a paraphrase made only of the statement's words that covers at least half of them
      ("My sister is visiting tomorrow." -> "She's going to visit tomorrow.").

    Content words: ``content_words`` (pronouns and articles dropped, so "I burned the
    toast" and "You burned the toast" are the same). A statement with no content words is
    never echoed.
    """
    said_words = content_words(said)
    reply_words = content_words(reply)
    if not said_words or not reply_words:
        return False
    if reply_words[: len(said_words)] == said_words:
        return True
    said_set = set(said_words)
    covered = sum(1 for w in said_set if w in set(reply_words)) / len(said_set)
    from_said = sum(1 for w in reply_words if w in said_set) / len(reply_words)
    return (covered >= 0.7 and from_said >= 0.5) or (covered >= 0.5 and from_said == 1.0)


def statement_words(said: str) -> set[str]:
    """The content words of ``said`` if it is a statement a reply could say back: not a
    question (a "?" in it: its answer shares its words, "What is the capital of Spain?" ->
    "The capital of Spain is Madrid."), and of two content words or more ("Seven." may be
    answered "Seven, got it."); else none."""
    words = set(content_words(said))
    return words if "?" not in said and len(words) >= 2 else set()


def mostly_from(words: list[str], statement: set[str]) -> bool:
    """Whether half or more of ``words`` (content words) are the ``statement``'s."""
    return sum(w in statement for w in words) >= len(words) / 2


def leans_on(reply: str, said: str) -> bool:
    """Whether ``reply`` to the statement ``said`` is made mostly of its words: half or more
    of the reply's content words are the statement's ("Bobby ripped the ledger." ->
    "Bobby broke the ledger."; "All circuits are busy now." -> "All circuits are in
    use."). Looser than ``is_echo``; never for a question (``statement_words``)."""
    statement = statement_words(said)
    reply_words = content_words(reply)
    return bool(statement) and bool(reply_words) and mostly_from(reply_words, statement)


def sentences(text: str) -> list[str]:
    """The cleaned sentences of ``text`` (split on . ! ?)."""
    return [c for c in (clean(s) for s in re.split(r"[.!?]+(?:\s|$)|\n", text)) if c]


def is_repeat(reply: str, earlier: list[str]) -> bool:
    """Whether ``reply`` says again what an earlier reply in the conversation said: a
    sentence of three or more words that also appears in an earlier reply, or the whole
    reply equal to an earlier one (after ``clean``)."""
    text = clean(reply)
    if not text:
        return False
    before = {s for e in earlier for s in sentences(e)}
    if text in {clean(e) for e in earlier}:
        return True
    return any(len(s.split()) >= 3 and s in before for s in sentences(reply))


# Words a reaction may open with before saying the statement back ("Yes, Mary rolled the
# barrel."): they do not count against a reply that is holding back a possible echo.
_OPENERS = frozenset("yes yeah yep okay ok right sure indeed hmm ah uh".split())


class RepeatWatch:
    """Watches a reply being written for one that says again what was said before: an
    earlier reply, whole, or one of its sentences of two words or more ("That's correct."
    to every other turn), word for word; a sentence the user just said, word for word ("He
    was not an ill-disposed young man." said back); or, when the user made a statement,
    a first sentence that says it back in other words (``is_echo``: "Bobby ripped the
    ledger." -> "It was Bobby who ripped the ledger."). ``may_repeat``: the reply so far
    is the start of such a thing, so its text is worth holding back; ``repeats``: it is
    one."""

    def __init__(self, earlier: list[str], heard: str = "", *, echoes: bool = True):
        """``earlier``: the bot's replies; ``heard``: what the user just said, whose
        sentences of three words or more are not to be said back ("Hello?" may be
        answered "Hello!"); with ``echoes``, nor said back in other words, if it is a
        statement. A question is not watched for echoes: its answer shares its words
        ("What is the capital of Spain?" -> "The capital of Spain is Madrid.")."""
        said = {clean(e) for e in earlier}
        said |= {s for e in earlier for s in sentences(e) if len(s.split()) >= 2}
        said |= {s for s in sentences(heard) if len(s.split()) >= 3}
        said.discard("")
        self._said = said
        self._statement_words = statement_words(heard) if echoes else set()
        self._statement = heard if self._statement_words else ""

    def may_repeat(self, text: str) -> bool:
        so_far = clean(text)
        return bool(so_far) and (
            any(s.startswith(so_far) for s in self._said) or self._may_echo(text)
        )

    def repeats(self, text: str) -> bool:
        """Whether ``text`` (a reply, or its start up to a sentence's end) opens with a
        sentence said before, is a whole earlier reply, or says the statement back."""
        first = sentences(text)
        return (
            clean(text) in self._said
            or (bool(first) and first[0] in self._said)
            or (bool(self._statement) and bool(first) and is_echo(first[0], self._statement))
        )

    def _may_echo(self, text: str) -> bool:
        """Whether ``text``, within its first sentence, may still say the statement back:
        at least half its content words so far are the statement's, or it has none yet."""
        if not self._statement or len(sentences(text)) > 1 or _ends_sentence(text):
            return False
        words = [w for w in content_words(text) if w not in _OPENERS]
        return not words or mostly_from(words, self._statement_words)


def _ends_sentence(text: str) -> bool:
    return bool(re.search(r"[.!?]\s*$", text))
