"""Does the bot's reply follow the tone of the person speaking? Measured in file mode.

    python -m benchmarks.tone_following [--config default] [--turns 24] [--follow on|off|both]
        [--sessions conversation|per-turn] [--sets questions,human | --human] [--line phone]
        [--out out/benchmarks/tone_following.json]

The user's turns are the styled questions of benchmarks/speech_styles.py (rate, loudness
and pitch varied independently; rendered once into out/speech/styles/), played through the
real pipeline in real time: all turns of a set in ONE conversation (one run_files call, so
the agent's per-session baseline hears them in order), or with ``--sessions per-turn``
each turn in a session of its own. ``--sets human`` (``--human``: both sets) plays the
styled human recordings as a conversation of their own (their rate moves with their pitch).
``--follow`` sets the config's ``tone.follow`` (and ``tone.hint``; off turns both off;
default both); with an agent that has no ``tone`` section the run is the "absent" baseline.

Reported per follow mode and set:
  1. reply round-trip WER: Whisper on the bot's reply audio vs the reply text (and the
     question WER of the agent's own transcripts);
  2. speaker similarity (resemblyzer's GE2E embeddings): cosine of each reply to the mean
     of all replies, to the first reply and to the voice's neutral delivery; mean and min;
  3. tone following: user and reply features per turn (agent.tone.analysis.analyze_tone, and the
     reference measurement of speech_styles), and the Spearman rank correlation user ->
     reply across turns for rate (syllables/s), loudness (dBFS) and pitch (median F0).
     Across turns this is confounded by the words: the user and the bot speak with the
     same Piper voice about the same things (a bot that echoes a long sentence is "slow"
     when the user was), so a bot that ignores the user does NOT score 0 there
     ("words_only_to_reply" shows how much the words alone explain). The clean measure is
     within pairs: every question is asked twice in mirrored styles, and across pairs the
     user's change (A - B; log2 rate, dB, semitones) is compared with the reply's change:
     Spearman rho, the share of pairs where the reply moved the same way (0.5 = chance)
     and the gain (least-squares slope through 0: 1 = mirrors the user fully, 0 = ignores;
     also the median of the pairs' ratios, which one odd pair cannot carry).
     A bot that ignores the user scores about 0 (0.5 for the sign share) there;
  4. latency p50/p95 of each stage (the file-mode turn log);
  5. the agent's own tone log per turn when file mode writes one (features it measured,
     the hint to the LLM, the voice style applied).
Writes the JSON report, the replies as WAVs, and PNG plots beside the report: user vs
reply scatter per feature (rho in the titles) and per-turn bars.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from agent.config import load_config
from benchmarks.report import write_report
from benchmarks.speech_styles import (
    StyledTurn,
    agent_analyzer,
    load_piper,
    measure,
    piper_speak,
    ranks,
    styled_turns,
)
from pipelines.callers.scoring import corpus_wer, percentile, transcribe
from pipelines.local.file_mode import FileTurn, run_files, write_replies_wav
from pipelines.stack import load_stack

FEATURES = {  # report name -> ToneFeatures field
    "rate": "syllable_rate",
    "loudness": "loudness_dbfs",
    "pitch": "f0_median_hz",
}
UNITS = {"rate": "syllables/s", "loudness": "dBFS", "pitch": "Hz"}
# The voice's neutral delivery, for the speaker-similarity anchor.
NEUTRAL_SENTENCES = [
    "The capital of France is Paris.",
    "A week has seven days, and a day has twenty four hours.",
    "Bees make honey from the nectar of flowers.",
]


# ---------------------------------------------------------------------------------------
# Statistics


def spearman(x: list[float], y: list[float]) -> dict:
    """Spearman's rho (scipy's when installed, with its p-value) over the pairs where both
    values exist; rho is None when fewer than 3 pairs or a constant side."""
    pairs = [
        (a, b)
        for a, b in zip(x, y)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    out = {"rho": None, "n": len(pairs)}
    if len(pairs) < 3:
        return out
    a, b = np.array(pairs).T
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return out
    try:
        from scipy.stats import spearmanr
    except ImportError:
        ra, rb = ranks(a), ranks(b)
        out["rho"] = round(float(np.corrcoef(ra, rb)[0, 1]), 3)
        return out
    result = spearmanr(a, b)
    out["rho"] = round(float(result.statistic), 3)
    out["p"] = round(float(result.pvalue), 4)
    return out


# ---------------------------------------------------------------------------------------
# Speaker similarity


class SpeakerEmbedder:
    """resemblyzer's VoiceEncoder (GE2E, 256-d, weights in the package), or the reason it
    cannot load (then no similarity is reported: nothing stands in for it)."""

    def __init__(self):
        self.error = None
        try:
            from resemblyzer import VoiceEncoder, preprocess_wav

            self._encoder = VoiceEncoder("cpu", verbose=False)
            self._preprocess = preprocess_wav
        except Exception as e:  # noqa: BLE001 - ImportError, no pkg_resources, no webrtcvad
            self._encoder = None
            self.error = f"{type(e).__name__}: {e}"

    @property
    def available(self) -> bool:
        return self._encoder is not None

    def embed(self, samples: np.ndarray, rate: int) -> np.ndarray | None:
        if self._encoder is None or len(samples) < rate * 0.3:
            return None
        audio = samples.astype(np.float32) / 32768 if samples.dtype == np.int16 else samples
        wav = self._preprocess(audio, source_sr=rate)  # 16 kHz, level-normalised, VAD-trimmed
        if len(wav) < 16000 * 0.3:
            return None
        return self._encoder.embed_utterance(wav)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def similarity(embeddings: list[np.ndarray | None], neutral: np.ndarray | None) -> dict:
    have = [e for e in embeddings if e is not None]
    if len(have) < 2:
        return {"error": "fewer than two replies long enough to embed"}
    centroid = np.mean(have, axis=0)
    first = have[0]
    to_mean = [round(_cos(e, centroid), 4) if e is not None else None for e in embeddings]
    to_first = [round(_cos(e, first), 4) if e is not None else None for e in embeddings]
    to_neutral = [
        round(_cos(e, neutral), 4) if e is not None and neutral is not None else None
        for e in embeddings
    ]

    def stats(values, skip_first=False):
        vals = [v for v in values if v is not None]
        if skip_first:
            vals = vals[1:]
        if not vals:
            return None
        return {"mean": round(float(np.mean(vals)), 4), "min": round(float(np.min(vals)), 4)}

    return {
        "to_mean_of_replies": stats(to_mean),
        "to_first_reply": stats(to_first, skip_first=True),
        "to_neutral_voice": stats(to_neutral),
        "per_turn": {"to_mean": to_mean, "to_first": to_first, "to_neutral": to_neutral},
    }


def neutral_voice_embedding(config, embedder: SpeakerEmbedder) -> np.ndarray | None:
    if not embedder.available or config.tts.engine != "piper":
        return None
    voice = load_piper(config)
    audio, rate = [], None
    for sentence in NEUTRAL_SENTENCES:
        samples, rate = piper_speak(
            voice, config.tts.piper, sentence, config.tts.piper.length_scale
        )
        audio.append(samples)
    return embedder.embed(np.concatenate(audio), rate)


# ---------------------------------------------------------------------------------------
# Running the turns


def follow_variant(config, mode: str):
    """The config with tone following on or off; (config, label). Without a ``tone``
    section (an agent that does not follow yet) only the "absent" baseline exists."""
    tone = getattr(config, "tone", None)
    if tone is None:
        if mode == "on":
            raise SystemExit(
                "this agent's config has no 'tone' section (tone following absent): "
                "run --follow off for the baseline"
            )
        return config, "absent"
    fields = type(tone).model_fields
    update = {"follow": mode == "on"}
    if "hint" in fields:
        update["hint"] = mode == "on"
    return config.model_copy(update={"tone": tone.model_copy(update=update)}), mode


def phone_copy(turn: StyledTurn, folder: Path) -> StyledTurn:
    """The turn as the bot hears it over a phone call: 8 kHz μ-law, back at its rate."""
    import soundfile as sf

    from pipelines.callers.phone import phone_line

    samples, rate = sf.read(str(turn.path), dtype="int16")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{turn.set}_{turn.index:03d}.wav"
    sf.write(str(path), phone_line(samples, rate), rate)
    return dataclasses.replace(turn, path=path)


async def run_set(stack, turns: list[StyledTurn], sessions: str) -> dict:
    """Play the turns; the file-mode log entries and each reply's audio."""
    if sessions == "conversation":
        result = await run_files(stack, [FileTurn(t.path) for t in turns])
        return {
            "turns": result.turns,
            "reply_audio": result.reply_audio,
            "rate": result.output_sample_rate,
            "ignored_input_secs": round(result.dropped_input_secs, 3),
        }
    logs, audio, rate, ignored = [], [], None, 0.0
    for turn in turns:
        result = await run_files(stack, [FileTurn(turn.path)])
        logs += result.turns
        audio += result.reply_audio
        rate = result.output_sample_rate
        ignored += result.dropped_input_secs
    return {
        "turns": logs,
        "reply_audio": audio,
        "rate": rate,
        "ignored_input_secs": round(ignored, 3),
    }


# ---------------------------------------------------------------------------------------
# Analysis


def feature_values(rows: list[dict | None], feature: str) -> list[float | None]:
    field = FEATURES[feature]
    return [r.get(field) if r and "error" not in r else None for r in rows]


def _scaled(feature: str, value: float | None) -> float | None:
    """Rate and pitch on a log scale (log2, semitones), loudness in dB as it is."""
    if value is None:
        return None
    if feature == "loudness":
        return value
    if value <= 0:
        return None
    return math.log2(value) * (12 if feature == "pitch" else 1)


def paired(turns: list[StyledTurn], user: list, reply: list) -> dict:
    """Within-pair changes (half A minus half B of the same words): user -> reply."""
    index = {(t.pair, t.half): i for i, t in enumerate(turns)}
    pairs = sorted({t.pair for t in turns if (t.pair, "A") in index and (t.pair, "B") in index})
    out = {}
    for feature in FEATURES:
        du, dr, di = [], [], []
        for p in pairs:
            a, b = index[(p, "A")], index[(p, "B")]
            ua, ub = (_scaled(feature, v) for v in (feature_values([user[a], user[b]], feature)))
            ra, rb = (_scaled(feature, v) for v in (feature_values([reply[a], reply[b]], feature)))
            if None in (ua, ub, ra, rb):
                continue
            du.append(ua - ub)
            dr.append(ra - rb)
            ia, ib = turns[a].intended, turns[b].intended
            di.append(
                {
                    "rate": math.log2(ia["rate"] / ib["rate"]),
                    "loudness": ia["loudness_db"] - ib["loudness_db"],
                    "pitch": ia["pitch_semitones"] - ib["pitch_semitones"],
                }[feature]
            )
        entry = {
            "pairs": len(du),
            "user_change": [round(v, 3) for v in du],
            "reply_change": [round(v, 3) for v in dr],
        }
        if du:
            su = float(np.dot(du, du))
            entry["gain"] = round(float(np.dot(du, dr)) / su, 3) if su else None
            # The median of the pairs' own ratios: one pair whose reply changed its words
            # (a misheard question) cannot carry it as it can the least-squares slope.
            ratios = [r / u for u, r in zip(du, dr) if abs(u) > 1e-6]
            entry["gain_median"] = round(float(np.median(ratios)), 3) if ratios else None
            entry["same_direction"] = (
                round(float(np.mean([np.sign(u) == np.sign(r) for u, r in zip(du, dr) if u])), 3)
                if any(du)
                else None
            )
            entry["spearman"] = spearman(du, dr)
            entry["spearman_intended"] = spearman(di, dr)["rho"]
        out[feature] = entry
    return out


def analyze_set(run: dict, turns: list[StyledTurn], whisper, embedder, neutral_emb) -> dict:
    rate = run["rate"]
    logs = run["turns"]
    analyze = agent_analyzer()
    heard, reply_wers, reply_features, embeddings = [], [], [], []
    for log, audio in zip(logs, run["reply_audio"]):
        text = log.get("reply", "")
        if len(audio) and text.strip():
            heard.append(transcribe(whisper, audio, rate))
            wer = corpus_wer([text], [heard[-1]])
            reply_wers.append(wer if math.isfinite(wer) else None)
            reply_features.append(measure(audio, rate, text, analyze))
        else:
            heard.append("")
            reply_wers.append(None)
            reply_features.append({})
        embeddings.append(embedder.embed(audio, rate) if len(audio) else None)

    sources = sorted({s for t in turns for s in t.measured})
    correlations = {}
    for source in sources:
        user = [t.measured.get(source) for t in turns]
        reply = [f.get(source) for f in reply_features]
        correlations[source] = {
            feature: spearman(feature_values(user, feature), feature_values(reply, feature))
            for feature in FEATURES
        }
        # Against the style the turn was made with (known exactly, no measuring noise).
        intended = {
            "rate": [t.intended["rate"] for t in turns],
            "loudness": [t.intended["loudness_db"] for t in turns],
            "pitch": [t.intended["pitch_semitones"] for t in turns],
        }
        correlations[source]["intended_to_reply"] = {
            feature: spearman(intended[feature], feature_values(reply, feature))["rho"]
            for feature in FEATURES
        }
        # The user's measured change against the neutral rendering of the same words (the
        # style alone) -> reply; and the neutral rendering -> reply, which is what the words
        # alone explain: a Piper-voiced user and a Piper-voiced bot saying related words can
        # correlate without any following (e.g. both slow on the same long words).
        change = [t.checks.get(f"{source}_change") or {} for t in turns]
        keys = {"rate": "rate_log2", "loudness": "loudness_db", "pitch": "pitch_semitones"}
        correlations[source]["style_change_to_reply"] = {
            feature: spearman(
                [c.get(keys[feature]) for c in change], feature_values(reply, feature)
            )["rho"]
            for feature in FEATURES
        }
        correlations[source]["paired"] = paired(turns, user, reply)
        correlations[source]["words_only_to_reply"] = {
            feature: spearman(
                feature_values([t.neutral.get(source) for t in turns], feature),
                feature_values(reply, feature),
            )["rho"]
            for feature in FEATURES
        }
    # What the agent itself measured on the captured turn (its tone log), vs the reply.
    agent_heard = [
        (log.get("tone") or {}).get("features") if isinstance(log.get("tone"), dict) else None
        for log in logs
    ]
    if any(agent_heard) and "agent" in sources:
        correlations["agent_log"] = {
            feature: spearman(
                feature_values(agent_heard, feature),
                feature_values([f.get("agent") for f in reply_features], feature),
            )
            for feature in FEATURES
        }

    stages = sorted({k for log in logs for k in log.get("latency_secs", {})})
    per_turn = []
    for i, (turn, log) in enumerate(zip(turns, logs)):
        per_turn.append(
            {
                "turn": i,
                "pair": turn.pair,
                "half": turn.half,
                "input": turn.path.name,
                "question": turn.text,
                "intended": turn.intended,
                "transcript": log.get("transcript", ""),
                "reply": log.get("reply", ""),
                "reply_heard_as": heard[i],
                "reply_wer": round(reply_wers[i], 4) if reply_wers[i] is not None else None,
                "user_features": turn.measured,
                "reply_features": reply_features[i],
                "latency_secs": log.get("latency_secs", {}),
                "reply_audio": log.get("reply_audio"),
                **({"tone": log["tone"]} if log.get("tone") is not None else {}),
                **({"error": log["error"]} if log.get("error") else {}),
            }
        )
    return {
        "turns": len(logs),
        "turns_without_reply": sum(1 for a in run["reply_audio"] if not len(a)),
        "input_ignored_while_bot_replied_secs": run["ignored_input_secs"],
        "question_wer": round(
            corpus_wer([t.text for t in turns], [log.get("transcript", "") for log in logs]), 4
        ),
        "reply_round_trip_wer": round(corpus_wer([log.get("reply", "") for log in logs], heard), 4),
        "speaker_similarity": similarity(embeddings, neutral_emb)
        if embedder.available
        else {"error": embedder.error},
        "tone_following": correlations,
        "tone_log_present": any(log.get("tone") is not None for log in logs),
        "latency_secs": {
            stage: {
                "p50": percentile([log["latency_secs"].get(stage) for log in logs], 50),
                "p95": percentile([log["latency_secs"].get(stage) for log in logs], 95),
            }
            for stage in stages
        },
        "per_turn": per_turn,
    }


# ---------------------------------------------------------------------------------------
# Plots


def plot(result: dict, source: str, title: str, stem: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        # The figures are in the report either way; a run must not be lost to a plot.
        return []

    rows = result["per_turn"]
    user = [r["user_features"].get(source) for r in rows]
    reply = [r["reply_features"].get(source) for r in rows]
    corr = result["tone_following"].get(source, {})
    paths = []

    fig, grid = plt.subplots(2, 3, figsize=(13, 8.4))
    for ax, feature in zip(grid[1], FEATURES):
        pair = corr.get("paired", {}).get(feature, {})
        du, dr = pair.get("user_change", []), pair.get("reply_change", [])
        ax.scatter(du, dr, color="tab:orange")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        if pair.get("gain") is not None and du:
            xs = np.linspace(min(du + [0]), max(du + [0]), 2)
            ax.plot(xs, pair["gain"] * xs, color="tab:red", lw=1)
        unit = {"rate": "log2", "loudness": "dB", "pitch": "semitones"}[feature]
        ax.set_title(
            f"within pairs: gain {pair.get('gain')}, same dir {pair.get('same_direction')}, "
            f"rho {pair.get('spearman', {}).get('rho')}",
            fontsize=9,
        )
        ax.set_xlabel(f"user change A-B ({unit})")
        ax.set_ylabel(f"reply change A-B ({unit})")
        ax.grid(alpha=0.3)
    axes = grid[0]
    for ax, feature in zip(axes, FEATURES):
        x, y = feature_values(user, feature), feature_values(reply, feature)
        pts = [(i, a, b) for i, (a, b) in enumerate(zip(x, y)) if a is not None and b is not None]
        ax.scatter([a for _, a, _ in pts], [b for _, _, b in pts], color="tab:blue")
        for i, a, b in pts:
            ax.annotate(str(i), (a, b), textcoords="offset points", xytext=(4, 3), fontsize=8)
        rho = corr.get(feature, {}).get("rho")
        p = corr.get(feature, {}).get("p")
        ax.set_title(
            f"{feature}: Spearman rho = {rho if rho is not None else 'n/a'}"
            + (f" (p={p:.2f})" if p is not None else "")
            + f"\nwords alone: {corr.get('words_only_to_reply', {}).get(feature)}",
            fontsize=10,
        )
        ax.set_xlabel(f"user {UNITS[feature]}")
        ax.set_ylabel(f"reply {UNITS[feature]}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} — features: {source}")
    fig.tight_layout()
    path = stem.with_name(stem.name + "_scatter.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(str(path))

    sim = result["speaker_similarity"]
    has_sim = "per_turn" in sim
    fig, axes = plt.subplots(
        4 if has_sim else 3, 1, figsize=(max(8, len(rows) * 0.7), 10), sharex=True
    )
    idx = np.arange(len(rows))
    for ax, feature in zip(axes, FEATURES):
        x = [v if v is not None else np.nan for v in feature_values(user, feature)]
        y = [v if v is not None else np.nan for v in feature_values(reply, feature)]
        bottom = min(np.nanmin(x + y), 0) if feature != "loudness" else np.nanmin(x + y) - 3
        ax.bar(idx - 0.2, np.array(x) - bottom, 0.4, bottom=bottom, label="user")
        ax.bar(idx + 0.2, np.array(y) - bottom, 0.4, bottom=bottom, label="reply")
        ax.set_ylabel(f"{feature} ({UNITS[feature]})")
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if has_sim:
        to_mean = [v if v is not None else np.nan for v in sim["per_turn"]["to_mean"]]
        axes[3].bar(idx, to_mean, 0.6, color="tab:green")
        axes[3].set_ylim(min(0.5, np.nanmin(to_mean) - 0.05), 1.0)
        axes[3].set_ylabel("reply ~ mean reply\n(cosine)")
        axes[3].grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(idx)
    axes[-1].set_xlabel("turn")
    fig.suptitle(f"{title} — per turn ({source})")
    fig.tight_layout()
    path = stem.with_name(stem.name + "_turns.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------------


async def run(args) -> dict:
    started = time.perf_counter()
    config = load_config(args.config)
    follow = args.follow or ("both" if getattr(config, "tone", None) is not None else "off")
    modes = ["on", "off"] if follow == "both" else [follow]
    variants = [follow_variant(config, m) for m in modes]
    stack = load_stack(config)
    load_secs = time.perf_counter() - started

    turns, manifest = styled_turns(
        config,
        args.turns,
        pitch_method=args.pitch_method,
        human="human" in args.sets,
        whisper=stack.whisper,
    )
    if args.line == "phone":
        turns = [phone_copy(t, Path(args.out).parent / "phone_line") for t in turns]
    sets = {name: [t for t in turns if t.set == name] for name in args.sets}

    embedder = SpeakerEmbedder()
    neutral_emb = neutral_voice_embedding(config, embedder)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results, plots, run_secs = {}, [], {}
    for variant, label in variants:
        mode_stack = dataclasses.replace(stack, config=variant)
        results[label] = {}
        for set_name, set_turns in sets.items():
            t0 = time.perf_counter()
            played = await run_set(mode_stack, set_turns, args.sessions)
            run_secs[f"{label}/{set_name}"] = round(time.perf_counter() - t0, 1)
            stem = out.with_name(f"{out.stem}_{label}_{set_name}")
            write_replies_wav(
                stem.with_name(stem.name + "_replies.wav"), played["reply_audio"], played["rate"]
            )
            result = analyze_set(played, set_turns, stack.whisper, embedder, neutral_emb)
            results[label][set_name] = result
            primary = "agent" if "agent" in result["tone_following"] else "reference"
            plots += plot(result, primary, f"follow {label}, {set_name}, {args.sessions}", stem)

    return {
        "config": args.config,
        "follow": [label for _, label in variants],
        "tone_config": {
            label: (variant.tone.model_dump() if getattr(variant, "tone", None) else None)
            for variant, label in variants
        },
        "sessions": args.sessions,
        "line": args.line,
        "turns": args.turns,
        "sets": args.sets,
        "features_from": {
            "agent": (
                "agent.tone.analysis.analyze_tone"
                if agent_analyzer()
                else "absent (no agent.tone.analysis)"
            ),
            "reference": "benchmarks.speech_styles.reference_features",
        },
        "speaker_embedder": "resemblyzer GE2E" if embedder.available else embedder.error,
        "model_load_secs": round(load_secs, 2),
        "run_secs": run_secs,
        "total_secs": round(time.perf_counter() - started, 1),
        "styles": {"params": manifest["params"], "summary": manifest.get("summary")},
        "results": results,
        "plots": plots,
    }


def summary(report: dict) -> dict:
    out = {
        k: report[k]
        for k in (
            "config",
            "follow",
            "sessions",
            "turns",
            "features_from",
            "model_load_secs",
            "run_secs",
            "total_secs",
        )
    }
    for label, sets in report["results"].items():
        for set_name, r in sets.items():
            sim = r["speaker_similarity"]
            out[f"{label}/{set_name}"] = {
                "question_wer": r["question_wer"],
                "reply_round_trip_wer": r["reply_round_trip_wer"],
                "turns_without_reply": r["turns_without_reply"],
                "speaker_similarity": {
                    k: sim.get(k)
                    for k in ("to_mean_of_replies", "to_first_reply", "to_neutral_voice")
                }
                if "error" not in sim
                else sim,
                "paired_gain": {
                    source: {f: c["paired"][f].get("gain") for f in FEATURES}
                    for source, c in r["tone_following"].items()
                    if "paired" in c
                },
                "paired_gain_median": {
                    source: {f: c["paired"][f].get("gain_median") for f in FEATURES}
                    for source, c in r["tone_following"].items()
                    if "paired" in c
                },
                "paired_same_direction": {
                    source: {f: c["paired"][f].get("same_direction") for f in FEATURES}
                    for source, c in r["tone_following"].items()
                    if "paired" in c
                },
                "paired_spearman": {
                    source: {f: c["paired"][f].get("spearman", {}).get("rho") for f in FEATURES}
                    for source, c in r["tone_following"].items()
                    if "paired" in c
                },
                "spearman_user_to_reply": {
                    source: {f: c[f]["rho"] for f in FEATURES}
                    for source, c in r["tone_following"].items()
                },
                **{
                    f"spearman_{key}": {
                        source: c[key] for source, c in r["tone_following"].items() if key in c
                    }
                    for key in ("intended_to_reply", "style_change_to_reply", "words_only_to_reply")
                },
                "latency_secs": r["latency_secs"],
                "tone_log_present": r["tone_log_present"],
            }
    return out


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="default")
    parser.add_argument(
        "--turns", type=int, default=24, help="user turns: half as many questions, each asked twice"
    )
    parser.add_argument(
        "--follow",
        choices=["on", "off", "both"],
        help="tone.follow (and tone.hint) of the config; default: both when "
        "the config has a tone section, else off (the 'absent' baseline)",
    )
    parser.add_argument(
        "--sessions",
        choices=["conversation", "per-turn"],
        default="conversation",
        help="all turns of a set in one session, or each in its own",
    )
    parser.add_argument(
        "--sets",
        default="questions",
        help="comma-separated: questions (Piper), human (styled recordings)",
    )
    parser.add_argument("--human", action="store_true", help="same as --sets questions,human")
    parser.add_argument(
        "--line",
        choices=["wide", "phone"],
        default="wide",
        help="phone: the user's turns reach the bot as over a phone call (8 kHz μ-law)",
    )
    parser.add_argument("--pitch-method", choices=["resample", "sox"], default="resample")
    parser.add_argument("--out", default="out/benchmarks/tone_following.json")
    args = parser.parse_args()
    args.sets = ["questions", "human"] if args.human else args.sets.split(",")
    if not args.sets or set(args.sets) - {"questions", "human"}:
        parser.error("--sets takes questions and/or human")
    if args.turns < 4:
        parser.error("--turns must be at least 4 (two questions, each asked twice)")
    report = asyncio.run(run(args))
    out = write_report(report, args.out)
    print(json.dumps(summary(report), indent=2))
    print(f"report: {out}")
    print("plots: " + ", ".join(report["plots"]))


if __name__ == "__main__":
    main()
