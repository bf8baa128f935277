"""Syllables of an English transcript from its spelling: the tempo of a turn with words.

Rules for vowel groups, silent endings, suffixes and compounds, a list of the common words
they get wrong, letter names of spelled-out capitals, and numbers read as words.
"""

from __future__ import annotations

import re
import unicodedata

_VOWELS = set("aeiouy")
_LETTER_SYLLABLES = {"w": 3}  # every other letter name is one syllable
_INTERJECTION = re.compile(r"^(h*m+|h+m+|sh+|ps+t|br+|gr+|pf+t|tsk|zz+|nth)$")

# Common words the rules below get wrong.
_EXCEPTIONS = {
    "business": 2,
    "businessman": 3,
    "element": 3,
    "elements": 3,
    "argue": 2,
    "argued": 2,
    "argues": 2,
    "arguably": 4,
    "nuclear": 3,
    "linear": 3,
    "ratio": 3,
    "ratios": 3,
    "soldier": 2,
    "soldiers": 2,
    "naked": 2,
    "wicked": 2,
    "embed": 2,
    "anime": 3,
    "diabetes": 4,
    "genius": 2,
    "nevertheless": 4,
    "parliament": 3,
    "businesses": 3,
    "every": 2,
    "different": 3,
    "maybe": 2,
    "recipe": 3,
    "cafe": 2,
    "naive": 2,
    "people": 2,
    "peoples": 2,
    "science": 2,
    "area": 3,
    "areas": 3,
    "idea": 3,
    "ideas": 3,
    "ideal": 2,
    "real": 1,
    "really": 2,
    "react": 2,
    "reaction": 3,
    "reality": 4,
    "realize": 3,
    "realized": 3,
    "going": 2,
    "being": 2,
    "doing": 2,
    "poem": 2,
    "poet": 2,
    "poetry": 3,
    "quiet": 2,
    "every's": 2,
    "anyone": 3,
    "whatever": 3,
    "however": 3,
    "whenever": 3,
    "wherever": 3,
    "forever": 3,
    "lifetime": 2,
    "likewise": 2,
    "therefore": 2,
    "furthermore": 3,
    "evening": 2,
    "interesting": 3,
    "vegetable": 3,
    "vegetables": 3,
    "chocolate": 2,
    "camera": 3,
    "favorite": 3,
    "separate": 3,
    "temperature": 4,
    "literature": 4,
    "actually": 4,
    "usually": 4,
    "probably": 3,
    "basically": 3,
    "especially": 4,
    "eyes": 1,
    "eye": 1,
    "hour": 1,
    "hours": 1,
    "our": 1,
    "ours": 1,
    "minute": 2,
    "minutes": 2,
    "machine": 2,
    "machines": 2,
    "police": 2,
    "one": 1,
    "once": 1,
    "done": 1,
    "gone": 1,
    "none": 1,
    "come": 1,
    "some": 1,
    "whose": 1,
    "office": 2,
    "service": 2,
    "practice": 2,
    "notice": 2,
    "justice": 2,
    "promise": 2,
    "purpose": 2,
    "engine": 2,
    "imagine": 3,
    "determine": 3,
    "examine": 3,
    "medicine": 3,
    "orange": 2,
    "courage": 2,
    "average": 3,
    "coverage": 3,
    "leverage": 3,
    "beverage": 3,
    "simile": 3,
    "apostrophe": 4,
    "catastrophe": 4,
    "coyote": 3,
    "karate": 3,
    "ukulele": 4,
    "finale": 3,
    "abalone": 4,
    "acne": 2,
    "anemone": 4,
    "epitome": 4,
    "hyperbole": 4,
    "sesame": 3,
    "adobe": 3,
    "guacamole": 4,
    "tamale": 3,
    "sayonara": 4,
    "okay": 2,
    "ok": 2,
    "mr": 2,
    "mrs": 2,
    "ms": 1,
    "dr": 2,
    "st": 1,
    "vs": 2,
    "etc": 4,
    "wednesday": 2,
    "february": 4,
    "january": 4,
    "iron": 2,
    "choir": 2,
    "lion": 2,
    "ion": 2,
    "violin": 3,
    "violence": 3,
    "violent": 3,
    "diamond": 2,
    "diary": 3,
    "giant": 2,
    "dialogue": 3,
    "dial": 2,
    "trial": 2,
    "denial": 3,
    "via": 2,
    "triumph": 2,
    "ruin": 2,
    "ruined": 2,
    "fluid": 2,
    "cruel": 2,
    "fuel": 2,
    "jewel": 2,
    "towel": 2,
    "vowel": 2,
    "bowel": 2,
    "shower": 2,
    "flower": 2,
    "power": 2,
    "tower": 2,
    "lower": 2,
    "prayer": 1,
    "layer": 2,
    "player": 2,
    "buyer": 2,
    "mayor": 2,
    "lawyer": 2,
    "coin": 1,
    "heroic": 3,
    "cooperate": 4,
    "cooperation": 5,
    "coordinate": 4,
    "coordination": 5,
    "preexisting": 4,
    "reenter": 3,
    "reuse": 2,
    "useful": 2,
    "eighty": 2,
    "forty": 2,
    "seventy": 3,
    "seventeen": 3,
    "nineteen": 2,
    "eleven": 3,
    "seven": 2,
    "zero": 2,
}

# Vowel pairs that are two syllables (hiatus) in these contexts: each match adds one.
_HIATUS_RULES = (
    r"(?<![ctsg])(?<![iu]l)(?<!ll)(?<!r)ia",  # piano, media, trial (not social, Asia)
    r"(?<=r)ia(?!ge)",  # variable, criteria (not marriage)
    r"(?<=[ct])ia(?![ln]|$)",  # appreciate, negotiate
    r"(?<=g)ia(?=nt)",  # giant
    r"(?<![tcsgx])(?<![tcsgx]h)(?<![iu]l)(?<!ll)io(?!n(?:s|al)?$)(?!(?<=[nv]io)r)",  # radio
    r"(?<=[^tcsgxlnh])ion(?=s?$)",  # lion, ion (not nation, million, onion)
    r"iu",  # medium, stadium
    r"(?<=[^aeiou])iet",  # quiet, society, variety
    r"(?<![ct])(?<!en)ien(?=t|c)",  # client, experience, audience (not patient, ancient)
    r"(?<=[aeiou]l)ien(?=s?$)",  # alien
    r"^sci(?=en)",  # science, scientist
    r"(?<=[^aeiou])(?<=.[a-z]{2})ie(?=rs?$|st$)",  # easier, carrier, earliest (not pier)
    r"(?<!p)(?<![gc])(?<!jeo)eo(?!u)",  # video, theory (not people, surgeon, gorgeous)
    r"eum",  # museum
    r"(?<=[rl])eal(?=i)",  # reality
    r"(?<=cr)ea(?=t(?!u))",  # create, creator (not creature)
    r"(?<=th)ea(?=t)",  # theater
    r"(?<=[^aeiou])ua(?<![qg]ua)",  # actual, usual (not equal, guard)
    r"(?<![qg])ue(?=nt|nc|l)",  # fluent, influence, cruel
    r"(?<![qg])uo",  # duo, fluorescent
    r"(?<![qgb])(?<!r)ui(?=[dn])",  # fluid, genuine (not guide, build, bruin)
    r"(?<=t)ui(?=t)",  # intuitive, tuition
    r"oe(?=[mtlv])",  # poem, poet, whoever
    r"ao",  # chaos
    r"ii",  # skiing
    r"^co(?=ord|oper|alit|exist|auth)",  # cooperate, coalition, coexist
    r"^rei(?=n[fvt]|nst|ter)",  # reinforce, reinvent, reiterate
    r"(?<=[^aeiou])ire$",  # fire, desire
    r"(?<=qu)ire$",  # acquire
    r"(?<=[aeiouy][^aeiouyr])re$",  # acre, genre
    r"(?<=[aeiouy][^aeiouy][^aeiouyr])(?<!rr)re$",  # centre (not occurred)
    r"(?:(?<=[^aeiouy])(?:ism|asm)|thm)s?$",  # tourism, sarcasm, rhythm
)
_HIATUS = re.compile("|".join(_HIATUS_RULES))
# Vowel letters that are silent: unique, league; safety, ninety; basically.
_SILENT = re.compile(r"(?<=[qg])ues?$|(?<=[^aeiouy])ety$")

# Second halves of compounds: a silent e before them stays silent (someone, baseball).
_COMPOUND_TAILS = (
    "one", "thing", "things", "body", "where", "how", "what", "time", "times", "day",
    "days", "ball", "work", "works", "mark", "marks", "line", "lines", "life", "style",
    "styles", "play", "hood", "place", "ware", "side", "house", "land", "book", "books",
    "store", "board", "hold", "holds", "holder", "holders", "spread", "wide", "craft",
    "cast", "back", "backer", "by", "of", "fore", "more", "man", "men", "shop", "wise",
    "some", "woman", "women", "person", "people",
    "power", "ground", "light", "point", "ship", "ships", "town", "way", "ways", "room",
)  # fmt: skip


def count_syllables(text: str) -> int:
    """Syllables in English text, estimated from spelling.

    Counts vowel groups in each word, then corrects for silent final e, -es/-ed endings,
    syllabic -le, suffixes (-ly, -ing, -ment, ...), vowel pairs that are two syllables
    (radio, actual, quiet) and contractions (didn't, it'll); all-capital initialisms
    (USA, TV) are spelled out, and numbers count as they are read ("42" = forty-two = 3,
    "1984" = nineteen eighty-four = 5, "3.5" = three point five = 3, "2nd" = second = 2).
    """
    if not text:
        return 0
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    words = _TOKEN.findall(text)
    mostly_caps = _mostly_capitals(words)
    total = 0
    for token in words:
        total += _token_syllables(token, mostly_caps)
    return total


_TOKEN = re.compile(
    r"\d{1,2}:\d{2}"  # clock times
    r"|\d+(?:-\d+)+"  # phone numbers and codes, read digit by digit: 555-1234
    r"|\d+(?:,\d{3})+(?:\.\d+)?(?:st|nd|rd|th|s)?"  # 1,500 / 12,000.5
    r"|\d+(?:\.\d+)?(?:st|nd|rd|th|s)?"  # 42 / 3.5 / 2nd / 1990s
    r"|[A-Za-z]+(?:'[A-Za-z]+)*"  # words and contractions
    r"|[%&+=@$\u20ac\u00a3\u00b0]"
)
_SYMBOLS = {"%": 2, "&": 1, "+": 1, "=": 2, "@": 1, "$": 2, "\u20ac": 2, "\u00a3": 2, "\u00b0": 2}


def _mostly_capitals(words: list[str]) -> bool:
    letters = [w for w in words if w[0].isalpha() and len(w) > 1]
    if len(letters) < 3:
        return False
    return sum(w.isupper() for w in letters) > 0.5 * len(letters)


def _token_syllables(token: str, mostly_caps: bool) -> int:
    if token[0].isdigit():
        return _number_syllables(token)
    if not token[0].isalpha():
        return _SYMBOLS.get(token, 0)
    if "'" in token:
        return _contraction_syllables(token)
    if (
        not mostly_caps
        and token.isupper()
        and 2 <= len(token) <= 5
        and (len(token) <= 3 or not any(c in "AEIOU" for c in token))
        and token.lower() not in _EXCEPTIONS
    ):
        return _spelled(token)
    return _word_syllables(token.lower())


def _spelled(word: str) -> int:
    return sum(_LETTER_SYLLABLES.get(c, 1) for c in word.lower())


def _contraction_syllables(token: str) -> int:
    base, _, rest = token.lower().partition("'")
    if rest == "t" and base.endswith("n"):  # didn't, can't, won't, isn't
        stem = base[:-1]
        if stem in ("ca", "wo", "do", "ai", "are", "were", "sha"):
            return 1
        return _word_syllables(stem) + (0 if stem[-1:] in _VOWELS else 1)
    n = _word_syllables(base) if base else 0
    if not base:
        return max(1, n)
    last = base[-1]
    if rest in ("ll", "ve", "d") and last not in _VOWELS and last != "e":
        n += 1  # it'll, could've, it'd
    elif rest == "s" and (last in "sxz" or base.endswith(("ch", "sh", "ce", "ge", "se", "ze"))):
        n += 1  # George's, boss's
    return max(1, n)


def _word_syllables(word: str) -> int:
    if not word:
        return 0
    if word in _EXCEPTIONS:
        return _EXCEPTIONS[word]
    if not any(c in "aeiouy" for c in word):
        return 1 if _INTERJECTION.match(word) else _spelled(word)
    return max(1, _core(word))


_SUFFIXES = [
    # (suffix, syllables it adds, shortest stem it may leave)
    ("fully", 2, 2),
    ("lessly", 2, 2),
    ("ments", 1, 2),
    ("ment", 1, 2),
    ("ness", 1, 2),
    ("less", 1, 2),
    ("ful", 1, 3),
    ("ly", 1, 1),
    ("ings", 1, 1),
    ("ing", 1, 1),
]


def _core(word: str) -> int:
    """Syllables of a lower-case word (0 for a bare consonant stem inside a longer word)."""
    if word in _EXCEPTIONS:
        return _EXCEPTIONS[word]
    if word.endswith("ically"):  # basically: basic + ly
        return _core(word[:-4]) + 1
    if word.endswith("edly") and len(word) > 6:  # allegedly, supposedly
        return _groups(word[:-4]) + 2
    if word.startswith("every") and len(word) > 6:  # everyone, everyday
        return 2 + _core(word[5:])
    for tail in _COMPOUND_TAILS:
        stem = word[: -len(tail)]
        if not word.endswith(tail) or len(stem) < 3:
            continue
        if stem[-1] == "e" and stem[-2] not in _VOWELS and _has_vowel(stem[:-2]):
            return _groups(stem) + _core(tail)  # someone, baseball, household
        if stem.endswith("es") and tail in ("man", "men", "woman", "women", "person"):
            return _core(stem) + _core(tail)  # spokesman
    for suffix, adds, shortest in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= shortest:
            stem = word[: -len(suffix)]
            if suffix.startswith("ing"):
                return _groups(stem) + adds  # making, seeing, preceding
            if not _has_vowel(stem):
                break  # bless, fly: not a suffix
            return _core(stem) + adds
    if len(word) > 3 and word.endswith("es"):
        before = word[-3]
        syllabic = before in "sxzcg" or word[-4:-2] in ("ch", "sh")
        return _groups(word[:-1]) + (1 if syllabic else 0)
    if len(word) > 3 and word.endswith("ed"):
        if word[-3] in "td":
            return _groups(word[:-2]) + 1
        return _groups(word[:-1])
    if len(word) > 2 and word.endswith("s") and not word.endswith(("ss", "us", "is", "ys")):
        return _groups(word[:-1])
    return _groups(word)


def _has_vowel(s: str) -> bool:
    return any(c in _VOWELS for c in s)


def _groups(word: str) -> int:
    """Vowel groups, with silent final e, syllabic -le, consonantal y and hiatus rules."""
    if not word:
        return 0
    if word in _EXCEPTIONS:
        return _EXCEPTIONS[word]
    # y is a consonant at the start of a word and before a vowel (yes, player, beyond).
    w = "".join(
        "Y" if c == "y" and (i == 0 or word[i + 1 : i + 2] in tuple("aeiou")) else c
        for i, c in enumerate(word)
    )
    count = 0
    if len(w) > 2 and w.endswith("le") and w[-3] not in _VOWELS and w[-3] not in "lY":
        w, count = w[:-2], 1  # table, little, people
    elif len(w) > 2 and w.endswith("e") and w[-2] not in _VOWELS and _has_vowel(w[:-1]):
        w = w[:-1]  # make, time, there (but not the, be, she)
    count += len(re.findall(r"[aeiouy]+", w))
    count += len(_HIATUS.findall(word)) - len(_SILENT.findall(word))
    return max(count, 0)


# --- numbers ------------------------------------------------------------------------------

_ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
]  # fmt: skip
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ["", "thousand", "million", "billion", "trillion"]
_SYLLABLES_OF = {}


def _n(word: str) -> int:
    if word not in _SYLLABLES_OF:
        _SYLLABLES_OF[word] = _word_syllables(word)
    return _SYLLABLES_OF[word]


def _below_thousand(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(_ONES[n])
    elif n:
        words.append(_ONES[n])
    return words


def _cardinal(n: int) -> list[str]:
    if n == 0:
        return ["zero"]
    words: list[str] = []
    scale = 0
    while n:
        n, part = divmod(n, 1000)
        if part:
            words = _below_thousand(part) + ([_SCALES[scale]] if scale else []) + words
        scale += 1
    return words


def _number_syllables(token: str) -> int:
    if "-" in token:
        return sum(_n(_ONES[int(d)]) for d in token if d.isdigit())
    if ":" in token:  # 10:30 -> ten thirty; 3:00 -> three; 9:05 -> nine oh five
        hours, minutes = token.split(":")
        m = int(minutes)
        words = _cardinal(int(hours))
        if m:
            words += ["oh", _ONES[m]] if m < 10 else _cardinal(m)
        return sum(_n(w) for w in words)
    suffix = ""
    match = re.match(r"^([\d,.]+?)(st|nd|rd|th|s)?$", token)
    if match:
        token, suffix = match.group(1), match.group(2) or ""
    whole, _, fraction = token.replace(",", "").partition(".")
    whole = whole or "0"
    if (len(whole) > 1 and whole.startswith("0")) or len(whole) > 15:
        words = [_ONES[int(d)] for d in whole]  # digit by digit: 007, long ids
    else:
        value = int(whole)
        plain = "," not in token and not fraction
        if plain and len(whole) == 4 and (1100 <= value <= 1999 or 2010 <= value <= 2099):
            high, low = divmod(value, 100)  # a year: nineteen eighty-four
            words = _below_thousand(high) + (
                ["hundred"] if low == 0 else (["oh", _ONES[low]] if low < 10 else _cardinal(low))
            )
        else:
            words = _cardinal(value)
    if suffix in ("st", "nd", "rd", "th") and words:
        last = words[-1]
        # Ordinals: second and -ieth add a syllable; first, third, fifth ... do not.
        extra = 1 if last == "two" or last.endswith("ty") else 0
        return sum(_n(w) for w in words) + extra
    count = sum(_n(w) for w in words)
    if fraction:
        count += _n("point") + sum(_n(_ONES[int(d)]) for d in fraction if d.isdigit())
    return count
