"""Turns a voice assistant gets, and how a reply to them is scored (text only, no audio).

Three kinds of turn, each asked as a new conversation (system prompt + the turn):

* ``QUESTIONS``: factual and everyday questions, each with accepted answer keywords. A
  reply is correct when it contains any one of them (see ``is_correct``).
* ``STATEMENTS``: things a person says (news, small talk). A good reply responds to them
  without repeating them back (see ``is_echo``).
* ``COMMANDS``: requests and short turns ("Tell me a joke.", "Thanks.", "Hello.").

Every reply is also checked with ``is_meta``: a reply that talks about "the user", a note,
its instructions or the message itself instead of answering is the failure small models
showed with a tone note in the prompt ("The user is asking about ..., so they need to know
what it is.").

Text is compared after ``clean``: lower case, no punctuation, digits as words (num2words
when installed, else a built-in converter for integers), so "60" and "sixty" match.

Keywords are lower-case words or phrases matched on word boundaries; one ending in ``*``
matches any word that starts with it ("relax*" matches "relaxing").

Self-check (also in tests/test_answer_set.py)::

    >>> q = QUESTIONS[0]; q.text
    'What is the capital of France?'
    >>> is_correct("It's Paris.", q), is_correct("I'm not sure.", q)
    (True, False)
    >>> is_correct("There are 60 minutes in an hour.", question("How many minutes are in an hour?"))
    True
    >>> is_meta("The user is asking about the ledger, so they need to know what it is.")
    True
    >>> is_meta("Paris is the capital of France.")
    False
    >>> is_echo("Bobby ripped the ledger.", "Bobby ripped the ledger.")
    True
    >>> is_echo("Oh no, why would he do that? Was it important?", "Bobby ripped the ledger.")
    False
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Question:
    """A question with accepted answer keywords (any of them, see ``is_correct``)."""

    text: str
    keywords: tuple[str, ...]
    kind: str = "fact"  # "fact" (one right answer) or "everyday" (advice, how-to)


@dataclass(frozen=True)
class Statement:
    """Something a person says; a good reply responds to it without repeating it."""

    text: str


@dataclass(frozen=True)
class Command:
    """A request or short turn. ``keywords``, when given, are accepted reply words."""

    text: str
    keywords: tuple[str, ...] = field(default_factory=tuple)


def _q(text: str, *keywords: str, kind: str = "fact") -> Question:
    return Question(text, tuple(keywords), kind)


# What any sensible answer to "I can't sleep" contains one of.
SLEEP_ADVICE = (
    "relax*", "read*", "screen*", "routine", "breath*", "caffeine", "dark*", "meditat*",
    "tea", "music", "bed", "calm*", "phone", "quiet",
)  # fmt: skip

QUESTIONS: list[Question] = [
    # Facts: one right answer. Number keywords are written as digits or words alike.
    _q("What is the capital of France?", "paris"),
    _q("How many minutes are in an hour?", "60"),
    _q("How many days are in a week?", "7"),
    _q("What color is the sky on a clear day?", "blue"),
    _q("What is two plus two?", "4"),
    _q("What is the largest planet in our solar system?", "jupiter"),
    _q("Who wrote Romeo and Juliet?", "shakespeare"),
    _q("At what temperature does water boil in Celsius?", "100"),
    _q("How many legs does a spider have?", "8"),
    _q("What planet do we live on?", "earth"),
    _q("What is the capital of Japan?", "tokyo"),
    _q("How many continents are there?", "7"),
    _q("What gas do plants take in from the air?", "carbon dioxide", "co2"),
    _q("What is the opposite of hot?", "cold"),
    _q("How many hours are in a day?", "24"),
    _q("What is ten times ten?", "100"),
    _q("Which animal is called the king of the jungle?", "lion"),
    _q("What is the tallest mountain in the world?", "everest"),
    _q("How many months are in a year?", "12"),
    _q("What do bees make?", "honey"),
    _q("What is the largest ocean on Earth?", "pacific"),
    _q("What language do people speak in Brazil?", "portuguese"),
    _q("Who painted the Mona Lisa?", "leonardo", "da vinci", "vinci"),
    _q("How many sides does a triangle have?", "3"),
    _q("What is the capital of Italy?", "rome"),
    _q("What is the freezing point of water in Celsius?", "0", "zero"),
    # Everyday: advice and how-to; keywords any sensible answer contains.
    _q(
        "What should I do if I can't sleep?",
        *SLEEP_ADVICE,
        "sleep schedule",
        "warm",
        kind="everyday",
    ),
    _q(
        "What's a good way to relax after work?",
        "walk*",
        "music",
        "read*",
        "bath*",
        "exercis*",
        "breath*",
        "meditat*",
        "yoga",
        "stretch*",
        "hobby",
        "hobbies",
        "tea",
        "nap",
        "movie*",
        "show*",
        "friend*",
        "book*",
        "shower",
        "cook*",
        kind="everyday",
    ),
    _q("How do I boil an egg?", "boil*", "water", "minute*", "pot", "pan", kind="everyday"),
    _q(
        "What should I eat for breakfast?",
        "egg*",
        "oat*",
        "toast",
        "fruit*",
        "yogurt",
        "yoghurt",
        "cereal*",
        "banana*",
        "pancake*",
        "smoothie*",
        "porridge",
        "avocado*",
        "bread",
        "protein",
        "granola",
        "berries",
        "muesli",
        "whole grain*",
        kind="everyday",
    ),
    _q(
        "How do I get rid of hiccups?",
        "water",
        "breath*",
        "hold*",
        "sugar",
        "drink*",
        "swallow*",
        "lemon",
        "vinegar",
        kind="everyday",
    ),
    _q(
        "What should I wear when it's raining?",
        "umbrella*",
        "raincoat*",
        "rain coat*",
        "jacket*",
        "coat*",
        "boots",
        "waterproof",
        "poncho*",
        "hood*",
        kind="everyday",
    ),
    _q("How long should I brush my teeth?", "2", "minute*", kind="everyday"),
    _q(
        "How can I drink more water?",
        "bottle*",
        "remind*",
        "glass*",
        "alarm*",
        "app*",
        "carry*",
        "meal*",
        "flavor*",
        "flavour*",
        "fruit*",
        "lemon",
        "schedule*",
        "sip*",
        "track*",
        kind="everyday",
    ),
    _q(
        "How do I make a cup of tea?",
        "water",
        "boil*",
        "steep*",
        "tea bag*",
        "teabag*",
        "kettle",
        "leaves",
        "brew*",
        "hot",
        "milk",
        kind="everyday",
    ),
    _q(
        "What can I do when I'm bored?",
        "read*",
        "walk*",
        "book*",
        "movie*",
        "game*",
        "music",
        "hobby",
        "hobbies",
        "call*",
        "draw*",
        "cook*",
        "exercis*",
        "learn*",
        "puzzle*",
        "paint*",
        "friend*",
        "write*",
        "writing",
        "bake*",
        "baking",
        "podcast*",
        "show*",
        "play*",
        kind="everyday",
    ),
]

STATEMENTS: list[Statement] = [
    Statement(text)
    for text in [
        "I just got back from a long run.",
        "My sister is visiting tomorrow.",
        "Bobby ripped the ledger.",
        "I'm feeling a bit tired today.",
        "I finally finished reading my book.",
        "The train was late again this morning.",
        "We adopted a puppy last week.",
        "I burned the toast.",
        "It's raining really hard outside.",
        "My team won the game last night.",
        "I have a job interview on Friday.",
        "I lost my keys somewhere in the house.",
        "The coffee machine at work is broken.",
        "I started learning the guitar.",
        "My neighbor plays loud music every night.",
        "I passed my driving test!",
        "The cat knocked a glass off the table.",
        "I'm cooking pasta for dinner tonight.",
    ]
]

COMMANDS: list[Command] = [
    Command("Tell me a joke."),
    Command("Say something nice."),
    Command("Thanks."),
    Command("Okay."),
    Command("Hello."),
    Command("Good morning."),
    Command("Goodbye."),
    Command("Can you help me with something?"),
    Command("Tell me a fun fact."),
    Command("What can you do?"),
]

# The multi-turn check: these statements as one conversation, to catch a model that says
# the same sentence turn after turn (``is_repeat``).
CONVERSATION: list[str] = [s.text for s in STATEMENTS[:8]]


def question(text: str) -> Question:
    """The question in ``QUESTIONS`` with this text."""
    for q in QUESTIONS:
        if q.text == text:
            return q
    raise KeyError(text)


# Everyday questions spoken in the conversation benchmark and the tests (plain text).
CONVERSATION_QUESTIONS = [
    "What is the capital of France?",
    "How many days are there in a week?",
    "What color is the sky on a clear day?",
    "Can you name a fruit that is yellow?",
    "What do bees make?",
    "How many legs does a dog have?",
    "What is the opposite of hot?",
    "Which animal is known as the king of the jungle?",
    "What do you call frozen water?",
    "How many hours are in a day?",
    "What is the largest planet in our solar system?",
    "What language do people speak in Spain?",
]


# Questions that get answers of more than a few words, where clause streaming can matter.
OPEN_QUESTIONS = [
    "Tell me about the city of Paris.",
    "Why do leaves change color in autumn?",
    "How does a bicycle stay upright?",
    "What should I pack for a beach trip?",
    "Why is the ocean salty?",
    "How do bees make honey?",
    "What is a good way to start learning to cook?",
    "Why do we need sleep?",
    "How do airplanes fly?",
    "What makes a good friend?",
    "Why is exercise good for you?",
    "How do plants grow?",
]


# Everyday questions for the long-call benchmark (issue 21), written once and split by a
# fixed rule: even positions are for tuning prompts, models and settings, odd positions are
# held out and only read for reported figures (``everyday_half``). None of them is in
# QUESTIONS or CONVERSATION_QUESTIONS, which earlier tuning looked at.
EVERYDAY: list[Question] = [
    _q("What is the capital of Spain?", "madrid"),
    _q("How many days are in a leap year?", "366"),
    _q("What color do you get when you mix blue and yellow?", "green"),
    _q("How many wheels does a bicycle have?", "2"),
    _q("At what temperature does water boil in Fahrenheit?", "212"),
    _q("Which planet is known as the red planet?", "mars"),
    _q("What is the largest animal on Earth?", "whale*"),
    _q("How many players does a soccer team have on the field?", "11"),
    _q("What is the main ingredient in guacamole?", "avocado*"),
    _q("Who was the first president of the United States?", "washington"),
    _q("What do caterpillars turn into?", "butterfl*", "moth*"),
    _q("How many strings does a standard guitar have?", "6"),
    _q("What is the capital of Canada?", "ottawa"),
    _q(
        "What should I do if I cut my finger?",
        "wash*",
        "bandage*",
        "pressure",
        "clean*",
        "plaster*",
        "band aid*",
        "bandaid*",
        "water",
        "cover*",
        kind="everyday",
    ),
    _q("How many seconds are in a minute?", "60"),
    _q("What is the closest star to Earth?", "sun"),
    _q("In which country are the pyramids of Giza?", "egypt"),
    _q("What do you call a baby cat?", "kitten*"),
    _q("How many colors are in a rainbow?", "7"),
    _q("What is the hardest natural material?", "diamond*"),
    _q("Which ocean lies between America and Europe?", "atlantic"),
    _q("What is the capital of Germany?", "berlin"),
    _q("How many legs does an insect have?", "6"),
    _q("What fruit is wine made from?", "grape*"),
    _q(
        "How do I keep bread fresh for longer?",
        "bag*",
        "freez*",
        "wrap*",
        "container*",
        "box",
        "airtight",
        "cool",
        "dry",
        "seal*",
        "bread bin",
        kind="everyday",
    ),
    _q("Who invented the light bulb?", "edison"),
    _q("What is the largest country in the world?", "russia"),
    _q("What do you call a baby dog?", "pupp*"),
    _q("What is the capital of Australia?", "canberra"),
    _q("How many centimeters are in a meter?", "100"),
    _q("What is the longest river in the world?", "nile", "amazon"),
    _q("Which gas do we need to breathe?", "oxygen"),
    _q("What is the currency of Japan?", "yen"),
    _q("How many weeks are in a year?", "52"),
    _q("Which instrument has black and white keys?", "piano*", "keyboard*"),
    _q("Which animal has the longest neck?", "giraffe*"),
    _q("What is the capital of England?", "london"),
    _q("How many planets are in our solar system?", "8"),
    _q("What do you use to measure temperature?", "thermometer*"),
    _q("Which season comes after winter?", "spring"),
    _q(
        "What can I do about a headache?",
        "water",
        "rest*",
        "drink*",
        "sleep*",
        "pain*",
        "ibuprofen",
        "aspirin",
        "paracetamol",
        "tylenol",
        "medic*",
        "lie down",
        "dark*",
        "relax*",
        "hydrat*",
        "break",
        kind="everyday",
    ),
    _q("Which bird is a symbol of peace?", "dove*"),
    _q("What is the largest hot desert in the world?", "sahara"),
    _q("How many hours are in two days?", "48"),
    _q("What language do people speak in Mexico?", "spanish"),
    _q("What is the capital of Egypt?", "cairo"),
    _q("How many sides does a hexagon have?", "6"),
    _q(
        "How can I fall asleep faster?",
        *SLEEP_ADVICE,
        "schedule",
        "warm",
        "cool",
        kind="everyday",
    ),
]


def everyday_half(half: str) -> list[Question]:
    """``EVERYDAY``'s "tune" half (even positions), its held-out "report" half (odd), or
    "all"."""
    if half == "all":
        return list(EVERYDAY)
    if half not in ("tune", "report"):
        raise ValueError(f"half is 'tune', 'report' or 'all', not {half!r}")
    return EVERYDAY[0 if half == "tune" else 1 :: 2]


# ----------------------------------------------------------------------------- text

from agent.llm.echo import STOPWORDS, clean, content_words, is_echo, is_repeat, sentences  # noqa: F401


def _keyword_pattern(keyword: str) -> re.Pattern:
    prefix = keyword.endswith("*")
    words = clean(keyword.rstrip("*"))
    return re.compile(r"\b" + re.escape(words) + ("" if prefix else r"\b"))


def has_keyword(reply: str, keywords) -> bool:
    """Whether ``reply`` contains any of ``keywords`` (cleaned, on word boundaries)."""
    text = clean(reply)
    return any(_keyword_pattern(k).search(text) for k in keywords)


def is_correct(reply: str, item: Question | Command | Statement) -> bool:
    """A question's reply contains an accepted keyword. A command or statement reply counts
    as correct when it says something (not empty), is not about the prompt (``is_meta``)
    and does not just repeat the turn (``is_echo`` for statements, the very same words for
    commands); a command's keywords, when given, must also appear."""
    if isinstance(item, Question):
        return has_keyword(reply, item.keywords)
    if not clean(reply) or is_meta(reply):
        return False
    # A short turn may be answered in kind ("Hello." -> "Hello! How can I help?"); only
    # saying exactly the same thing back counts as an echo there.
    echoed = (
        clean(reply) == clean(item.text) if isinstance(item, Command) else is_echo(reply, item.text)
    )
    if echoed:
        return False
    if isinstance(item, Command) and item.keywords:
        return has_keyword(reply, item.keywords)
    return True


# ----------------------------------------------------------------------------- meta

# Each pattern is matched against the reply lower-cased (not cleaned: "assistant:" needs
# its colon). They are deliberately narrow: "note" alone or "you" are ordinary words, so
# only phrases that name the prompt's parts or describe the message count.
META_PATTERNS: list[re.Pattern] = [
    re.compile(p)
    for p in [
        # Speaks about the person in the third person, as the prompt does.
        r"\bthe (user|speaker|human|caller)('s|s)?\b",
        # The tone note and the prompt's parts.
        r"\b(the|this|your|tone|system|added) notes?\b(?! of\b)",
        r"\b(my|these|those|your|system|given) instructions?\b",
        r"\bthe instructions? (say|says|said|ask|asks|asked|tell|tells|told|is|are)\b",
        r"\bsystem (message|prompt|note)s?\b",
        r"\bsounded\s*:",
        r"\b(user|speaker|they|he|she) sounded\b",
        # A role label printed as text.
        r"(^|\n|\s)(assistant|user|system)\s*:",
        r"<\|?(im_start|im_end|start_of_turn|end_of_turn|eot_id)",
        # Describes the message instead of answering it.
        r"\b(the|this|your|that) (message|question|statement|sentence|input|text|prompt|query)"
        r" (is|was|asks|says|seems|appears|means|indicates|suggests|mentions|describes|states)\b",
        r"\b(they|he|she|the person|someone)( is|'s| are|'re) (asking|saying|telling|stating|"
        r"mentioning|talking about|expressing|describing)\b",
        r"\bso (they|he|she) (need|needs|want|wants|would like) to\b",
    ]
]


def is_meta(reply: str) -> bool:
    """Whether ``reply`` talks about the user, the note, the instructions, a role label or
    the message itself rather than to the person (see ``META_PATTERNS``).

    False positives are kept rare on purpose: "I'll make a note of that", "on that note",
    "play a note", "follow the instructions on the box" and "that sounds good" do not
    match.
    """
    text = reply.lower().replace("\u2019", "'")
    return any(p.search(text) for p in META_PATTERNS)


# ----------------------------------------------------------------------------- echo

# ----------------------------------------------------------------------------- repeats
