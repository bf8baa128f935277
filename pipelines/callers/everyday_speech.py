"""The everyday questions (answer_set.EVERYDAY) spoken by voices unlike the bot's Piper
voice and unlike each other, for a long call (``benchmarks.call_latency --set everyday``).

    python -m pipelines.callers.everyday_speech [--out out/everyday_speech]

Question N is spoken by voice (N div 2) mod 4, so each voice asks a quarter of each half
(the halves are the even and the odd positions):
espeak-ng (en-us, a formant synthesiser), flite's slt (a US woman, statistical
parametric) and awb (a Scottish man), and festival's kal (a US man, diphone
concatenation). Writes OUT/VOICE/NN.wav (16 kHz mono) and OUT/manifest.json, a list of
{id, path, text, voice, half}. Needs Debian's espeak-ng, flite and festival with
festvox-kallpc16k.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from agent.audio import load_input_wav, write_wav
from pipelines.callers.answer_set import EVERYDAY, everyday_half

RATE = 16000
OUT = Path(__file__).resolve().parents[2] / "out" / "everyday_speech"

# name: (the program it needs, the command that writes OUT.wav for the text on stdin)
VOICES: dict[str, tuple[str, list[str]]] = {
    "espeak": ("espeak-ng", ["espeak-ng", "-v", "en-us", "-s", "165", "-w", "{out}", "--stdin"]),
    "flite-slt": ("flite", ["flite", "-voice", "slt", "-f", "/dev/stdin", "-o", "{out}"]),
    "flite-awb": ("flite", ["flite", "-voice", "awb", "-f", "/dev/stdin", "-o", "{out}"]),
    "festival-kal": ("text2wave", ["text2wave", "-o", "{out}"]),
}


def speak(voice: str, text: str, path: Path) -> Path:
    """``text`` in ``voice``, as a 16 kHz mono WAV at ``path``."""
    _, command = VOICES[voice]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        cmd = [part.replace("{out}", str(raw)) for part in command]
        proc = subprocess.run(cmd, input=text, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not raw.exists():
            raise RuntimeError(f"{voice} on {text!r}: {proc.stderr.strip() or 'no audio'}")
        samples, _ = load_input_wav(raw, RATE)
    return write_wav(path, samples, RATE)


def render(out: Path = OUT) -> list[dict]:
    missing = sorted({program for program, _ in VOICES.values() if not shutil.which(program)})
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: apt-get install espeak-ng flite festival "
            "festvox-kallpc16k"
        )
    voices = list(VOICES)
    tune = everyday_half("tune")
    manifest = []
    for number, question in enumerate(EVERYDAY):
        voice = voices[(number // 2) % len(voices)]
        path = Path(voice) / f"{number:02d}.wav"
        (out / voice).mkdir(parents=True, exist_ok=True)
        speak(voice, question.text, out / path)
        half = "tune" if question in tune else "report"
        manifest.append(
            {
                "id": f"everyday-{number:02d}",
                "path": str(path),
                "text": question.text,
                "voice": voice,
                "half": half,
            }
        )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    manifest = render(args.out)
    print(f"{len(manifest)} WAVs, {args.out / 'manifest.json'}")


if __name__ == "__main__":
    main()
