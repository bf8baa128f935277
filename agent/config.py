"""The agent's configuration: a YAML file validated against this schema.

Every section forbids unknown keys, so a typo in a config is an error that names the key
instead of a setting silently ignored.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.models import ModelRef
from tts import ENGINES

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message names the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ASRConfig(_Section):
    model: ModelRef
    compute_type: str = "int8"
    device: str = "cpu"
    language: str = "en"
    # Whisper's own no-speech probability above which a segment is dropped as noise.
    no_speech_prob: float = Field(0.6, ge=0, le=1)
    beam_size: int = Field(1, ge=1, le=10)
    # Encode each turn over its own length (at least min_window_secs) instead of
    # Whisper's 30 s window: 4-5x faster on a CPU for the same words (agent/asr/whisper.py).
    utterance_window: bool = True
    min_window_secs: float = Field(10.0, ge=1, le=30)
    # CTranslate2 threads; 0 lets it choose. On 2 cores, 2 leaves nothing oversubscribed.
    cpu_threads: int = Field(0, ge=0)
    # p99 time from the end of speech to the final transcript (measured by
    # benchmarks/turn_end.py); turn-end detection waits this long for the words at most.
    ttfs_p99_secs: float = Field(0.65, gt=0, le=5)
    # Start transcribing when the voice falls silent, before the VAD confirms the stop
    # (its stop_secs later), so the words are ready about when the turn can end.
    early_transcription: bool = True
    # Given to Whisper as the text before each turn; fillers in it make Whisper write the
    # user's "um"s and "uh"s, which tell turn-end detection a pause is mid-thought. On the
    # human set (benchmarks/turn_end.py) cut-ins on pauses mid-thought fell from 39 % to
    # 33 %, finished turns waiting > 1.5 s from 3 % to 0 %, and WER on finished turns from
    # 0.23 to 0.20. Empty: none (Whisper drops most fillers).
    filler_prompt: str = "Um, so, uh, I was thinking, hmm, like... and, um, yeah."


class VADConfig(_Section):
    confidence: float = Field(0.7, gt=0, lt=1)
    start_secs: float = Field(0.2, ge=0.05, le=2)
    stop_secs: float = Field(0.2, ge=0.05, le=3)
    min_volume: float = Field(0.6, ge=0, le=1)


class TurnConfig(_Section):
    # smart-turn: after each pause Pipecat's bundled Smart Turn v3 model and the
    # transcript's words decide whether the user is done (pipelines/turns/turn_end.py);
    # silence: the turn ends after a fixed silence.
    # A name in pipelines.turns.TURN_END_POLICIES.
    end_detection: str = "smart-turn"
    silence_timeout_secs: float = Field(0.6, ge=0.1, le=5)
    # smart-turn: words that read as a finished sentence (Whisper's end punctuation, no
    # trailing "and"/"the"/"um") end the turn at once; words that trail off wait
    # fallback_secs of silence; unpunctuated words ask Smart Turn: done → after
    # finished_wait_secs, else fallback_secs. words_decide: false asks Smart Turn at every
    # pause (both finished → at once, one → finished_wait_secs). Chosen from
    # python -m benchmarks.turn_end and benchmarks.call_latency (pipelines/turns/turn_end.py).
    finished_wait_secs: float = Field(0.5, ge=0, le=5)
    fallback_secs: float = Field(2.0, ge=0.2, le=10)
    words_decide: bool = True
    # smart-turn: start the LLM on the words while that wait runs; its reply is held
    # until the turn has ended and dropped if the user goes on.
    speculative_llm: bool = True
    # Audio kept before the VAD's start of speech when a user turn is captured.
    pre_roll_secs: float = Field(0.3, ge=0, le=2)
    # After the bot's audio has played, input stays closed this long so the tail of the
    # bot's own voice (room echo, a speaker's decay) is not heard as the user.
    echo_tail_secs: float = Field(0.2, ge=0, le=3)
    # If no reply is heard this long after a user turn (an LLM that hangs), listen again.
    max_reply_wait_secs: float = Field(60, ge=1)
    # A monologue is cut here and answered: a stretch of speech with no pause the VAD
    # hears is ended after this long, and a turn that has run this long ends at its next
    # pause whatever its words say (120 s of speech used to make one 120 s turn, beyond
    # Whisper's 30 s window).
    max_user_turn_secs: float = Field(25.0, ge=3, le=300)


class LLMConfig(_Section):
    # A name in pipelines.services.llm.BACKENDS: llama-cpp (in process) or openai (a server).
    backend: str = "llama-cpp"
    # llama-cpp: a GGUF file. openai: unused.
    model: ModelRef | None = None
    # openai: any OpenAI-compatible server (Ollama, vLLM, llama.cpp server).
    base_url: str | None = None
    api_key: str = "not-needed"
    model_name: str | None = None
    # Chosen with benchmarks/llm_choice.py (answers, echoes of statements, replies about
    # "the user", first-token time) for the packaged small models.
    system_prompt: str = (
        "You are a friendly voice assistant talking with someone. Reply in one or two short "
        "sentences. Answer questions directly. When someone tells you something, respond to "
        "it naturally, don't repeat it. Plain words only."
    )
    # Example exchanges (what a person says, what the assistant answers) placed before the
    # conversation: small models answer and react to statements far better with them.
    # A second statement and a fragment: without them the 1.5B said statements back in
    # other words and turned fragments away ("I'm sorry, but "six" is not a valid
    # command.") in human calls.
    examples: list[tuple[str, str]] = [
        ("What is the capital of Spain?", "Madrid."),
        ("I painted my kitchen.", "Nice! What color did you pick?"),
        (
            "The bus was late again this morning.",
            "Oh no, that's annoying. Did you make it on time?",
        ),
        ("So, uh, the thing is", "Sorry, I missed that. Could you say it again?"),
    ]
    max_tokens: int = Field(80, ge=1, le=4096)
    temperature: float = Field(0.3, ge=0, le=2)
    seed: int | None = 0
    context_tokens: int = Field(2048, ge=256)
    threads: int | None = Field(None, ge=1)
    # llama-cpp: which build of llama.cpp runs the model (agent/llm/llama_build.py): auto is
    # node-llama-cpp's, fetched from npm at setup and built for this CPU, where it is there,
    # else the xllamacpp wheel's (AVX2).
    runtime: Literal["auto", "xllamacpp", "node-llama-cpp"] = "auto"
    # Past this many user/assistant exchanges the oldest are dropped (in blocks, see
    # agent.llm.prompt.trim_history), which bounds the prompt within context_tokens.
    max_history_turns: int = Field(16, ge=1)
    # How the model sees its own past replies: whole, or cut to their first sentence
    # (agent.llm.prompt.replies_cut), which keeps a call's replies from running longer
    # and longer.
    history_replies: Literal["whole", "first-sentence"] = "first-sentence"
    # Past exchanges whose reply turned the person away ("I'm sorry, but I can't assist
    # with that.") left out of the prompt (agent.llm.prompt.without_refusals).
    drop_refusals: bool = True
    # llama-cpp: a reply that would say word for word what was said before (an earlier
    # reply, a sentence the user just said), or say a statement back in other words, is
    # held back and written anew, and a later sentence said before ends it. On 2 cores
    # the turns it rewrites wait ~0.6 s longer (README, "Answers worth hearing").
    rewrite_repeats: bool = True
    # llama-cpp: how hard a reply is turned away, as it is written, from saying again word
    # for word an earlier reply or the user's words (llama.cpp's DRY sampler, see
    # agent/llm/engine.Sampling; 0: off). Fewer replies then need writing anew.
    dry_multiplier: float = Field(0.8, ge=0, le=5)
    # backend openai: the longest wait for the server's first or next word.
    request_timeout_secs: float = Field(10.0, gt=0, le=300)
    # Said when a reply fails (the LLM server refuses, stalls or dies mid-reply).
    apology: str = "Sorry, I lost my train of thought. Could you say that again?"

    @model_validator(mode="after")
    def _backend_needs(self):
        cores = os.cpu_count() or 1
        if self.threads is not None and self.threads > 2 * cores:
            # Oversubscribed llama.cpp threads spin against each other: 2000 of them made a
            # turn take 85 s on 2 cores.
            raise ValueError(
                f"llm.threads {self.threads} is more than twice this machine's {cores} cores"
            )
        if self.backend == "llama-cpp" and self.model is None:
            raise ValueError("llm.backend 'llama-cpp' needs llm.model (a GGUF file)")
        if self.backend == "openai" and not (self.base_url and self.model_name):
            raise ValueError("llm.backend 'openai' needs llm.base_url and llm.model_name")
        return self


class PiperVoiceConfig(_Section):
    model: ModelRef
    # Piper's own knobs: <1 speaks faster; noise scales set how varied the voice sounds.
    length_scale: float = Field(1.0, gt=0.3, lt=3)
    noise_scale: float = Field(0.667, ge=0, le=2)
    noise_w_scale: float = Field(0.8, ge=0, le=2)
    volume: float = Field(1.0, gt=0, le=4)


class VoicePromptConfig(_Section):
    audio: str  # WAV of the voice the bot should have
    text: str  # what is said in it

    @model_validator(mode="after")
    def _has_words(self):
        if not self.text.strip():
            raise ValueError("voice_prompt.text is empty: say what the prompt audio says")
        return self


class MisoVoiceConfig(_Section):
    # A directory with config.json + model.safetensors (release format), or a Hugging Face
    # repo id (fetched only when online).
    checkpoint: str
    codec: str = "kyutai/mimi"  # Mimi: a transformers directory, a moshi .safetensors, a repo id
    tokenizer: str | None = None  # None: the llama-models package's Llama-3 tokenizer
    # How a segment's text is written for the model: MisoTTS "[0] text", Sesame CSM "[0]text".
    text_format: Literal["miso", "csm"] = "miso"
    device: str = "cuda"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # Without CUDA the engine refuses to start unless this is set (CPU is far from real time).
    allow_cpu: bool = False
    compile_decoder: bool = False
    user_speaker: int = Field(0, ge=0)
    bot_speaker: int = Field(1, ge=0)
    voice_prompt: VoicePromptConfig | None = None
    temperature: float = Field(0.9, gt=0, le=2)
    topk: int = Field(50, ge=1)
    max_audio_secs: float = Field(15.0, gt=0, le=120)
    # Fewer than all 32 codebooks: faster, coarser audio.
    num_codebooks: int | None = Field(None, ge=1, le=32)
    first_chunk_frames: int = Field(1, ge=1, le=2)
    chunk_frames: int = Field(4, ge=1)
    seed: int | None = None

    @model_validator(mode="after")
    def _distinct_speakers(self):
        if self.user_speaker == self.bot_speaker:
            raise ValueError("tts.miso.user_speaker and bot_speaker must differ")
        return self


class TTSConfig(_Section):
    # A name in tts.ENGINES; an engine with settings reads them from its section below.
    engine: str = "piper"
    # A reply's first phrase (up to a comma, semicolon or colon, or up to a word that
    # opens a new phrase: "and", "because", "with", ...) is spoken on its own once it has
    # this many words, so the voice starts before the first sentence is written
    # (pipelines/turns/first_clause.py). 0 speaks whole sentences only.
    first_clause_min_words: int = Field(3, ge=0)
    piper: PiperVoiceConfig | None = None
    miso: MisoVoiceConfig | None = None

    @model_validator(mode="after")
    def _engine_needs(self):
        if self.engine not in ENGINES:
            raise ValueError(f"unknown tts.engine '{self.engine}' (known: {', '.join(ENGINES)})")
        if self.engine in type(self).model_fields and getattr(self, self.engine) is None:
            raise ValueError(f"tts.engine '{self.engine}' needs a tts.{self.engine} section")
        return self


class ToneConfig(_Section):
    # The voice moves toward how the user sounds (rate, loudness, pitch, liveliness). The
    # LLM is not told: small models narrated such notes instead of answering.
    follow: bool = True


class IceServerConfig(_Section):
    urls: list[str] = Field(min_length=1)  # "stun:stun.example.org:3478", "turn:…"
    username: str = ""
    credential: str = ""


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=1, le=65535)
    # Calls at once, browser and phone together. 2 on the default stack: on 2 cores one
    # caller hears replies at p50 1.3-1.5 s / p95 1.8-2.0 s, two at 1.5-1.8 / 2.4-3.2 s,
    # three at 3.9-4.6 / 7-8 s (python -m benchmarks.load). Raise it on a bigger machine.
    max_sessions: int = Field(2, ge=1)
    # What a caller beyond max_sessions hears (phone) or reads (the page, with a 503).
    busy_message: str = "Sorry, all lines are busy right now. Please call again in a few minutes."
    # An SDP offer is a few kB; anything far larger is not an offer.
    max_offer_bytes: int = Field(64 * 1024, ge=1024)
    # Admission: a request's line, headers and body must arrive within
    # request_timeout_secs (every route); a session whose peer has not connected within
    # connect_timeout_secs of its offer frees its slot; one client (IP address) may send
    # offers_per_minute offers and have pending_offers_per_client of them not yet
    # connected (else two offers every 10 s from one address keep a 2-slot server full;
    # a new offer waits a few seconds for its earlier ones to connect before it is refused).
    # Browsers' offers must come from this server's own page, or from one of
    # allowed_origins ("https://example.org").
    request_timeout_secs: float = Field(10.0, gt=0, le=120)
    # On SIGTERM / Ctrl-C: replies being spoken may finish for this long, then calls end.
    shutdown_grace_secs: float = Field(10.0, ge=0, le=120)
    connect_timeout_secs: float = Field(10.0, gt=0, le=120)
    offers_per_minute: int = Field(30, ge=1)
    pending_offers_per_client: int = Field(1, ge=1)
    # A call whose far end sends no audio for this long is over: a browser or phone line
    # sends audio all the time (silence too), so its process or network is gone. Without
    # this a dead browser held its slot until ICE gave up (~35 s).
    peer_silence_secs: float = Field(5.0, gt=0, le=120)
    # A JSON Lines log per call (heard words, replies, stage latencies; flushed line by
    # line, pipelines/serve/session_log.py) in session_log_dir (empty: the cache folder's
    # sessions/, ~/.cache/voice-agent/sessions).
    session_logs: bool = True
    session_log_dir: str = ""
    allowed_origins: list[str] = []
    # STUN/TURN servers for callers behind NAT, for the page's and the server's own peer
    # connections. With turn_secret (coturn's static-auth-secret) the turn: servers get
    # credentials valid for turn_ttl_secs, made for each call (the TURN REST API).
    ice_servers: list[IceServerConfig] = []
    turn_secret: str = ""
    turn_ttl_secs: int = Field(3600, ge=60)
    # Phone calls: the host name the telephony provider reaches this server by (a tunnel
    # such as ngrok), used in the stream URL of the TwiML answer; empty: the request's
    # Host header. A call is hung up after max_call_secs.
    public_host: str = ""
    max_call_secs: int = Field(1800, ge=10)
    # The providers whose calls are taken. Twilio's webhook is signed (checked when
    # TWILIO_AUTH_TOKEN is set); the others' webhooks hand a stream URL to anyone who asks,
    # so they are off until listed here.
    phone_providers: list[str] = ["twilio"]


class SharedEngineConfig(_Section):
    """A model engine served once for a whole cluster (a Ray Serve deployment) instead of
    loaded by every node (pipelines/cluster/engines.py). Its replicas follow load: Ray
    Serve adds one when the calls' requests in flight (replies being written or spoken,
    averaged over ``load_window_secs``) pass ``target_ongoing`` per replica for
    ``upscale_delay_secs``, and removes one after
    ``downscale_delay_secs`` below it; ``min_replicas`` == ``max_replicas`` fixes them."""

    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    target_ongoing: float = Field(2.0, gt=0)
    load_window_secs: float = Field(10.0, gt=0)  # requests in flight averaged over it
    upscale_delay_secs: float = Field(10.0, ge=0)
    downscale_delay_secs: float = Field(120.0, ge=0)
    # What one replica reserves on its Ray node: a MisoTTS replica wants a GPU (num_gpus:
    # 1, or a fraction for several per GPU); Ray places it only on a node that has one.
    # An LLM replica runs on num_cpus threads (unless llm.threads says otherwise).
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    # The LLM's: how many conversations one replica keeps read (each holds
    # llm.context_tokens of its KV cache); a call beyond it has its prompt read afresh.
    sessions: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _replicas_in_order(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas is less than min_replicas")
        return self


class ClusterConfig(_Section):
    """With --cluster: which engines the nodes share (unset: each node loads its own, as
    on one machine). Whisper, Silero and the turn-end model stay with each node's calls."""

    llm: SharedEngineConfig | None = None  # the llama-cpp backend's engine
    tts: SharedEngineConfig | None = None  # the voice (tts.engine's), MisoTTS on GPU nodes

    @property
    def shares_engines(self) -> bool:
        return self.llm is not None or self.tts is not None


class AgentConfig(_Section):
    asr: ASRConfig
    vad: VADConfig = VADConfig()
    turn: TurnConfig = TurnConfig()
    llm: LLMConfig
    tts: TTSConfig
    tone: ToneConfig = ToneConfig()
    server: ServerConfig = ServerConfig()
    cluster: ClusterConfig = ClusterConfig()
    # Rate of the audio the pipeline works with inside; Whisper and Silero want 16 kHz.
    audio_in_sample_rate: Literal[16000] = 16000
    audio_out_sample_rate: int = Field(24000, ge=8000, le=48000)


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{where}'")
        else:
            lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config given as a path, or as a name of a file in ``configs/`` (``default``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.exists():
        return named
    raise ConfigError(
        f"config '{name_or_path}' not found (neither a file nor configs/{name_or_path}.yaml)"
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the
    last one silently, so a setting written twice would be half ignored)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(name_or_path: str | Path = "default") -> AgentConfig:
    """Read and validate a config; raise ConfigError naming what is wrong."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {e.start})") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    return parse_config(data, source=str(path))


def parse_config(data: object, source: str = "<dict>") -> AgentConfig:
    """Validate an already-parsed config mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping")
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(source, e)) from None


def registered(registry: dict[str, str], key: str, name: str) -> ModuleType:
    """The module ``registry`` names ``name`` by, the value of config key ``key``; a name
    it does not know is a ConfigError listing those it does."""
    if name not in registry:
        raise ConfigError(f"unknown {key} '{name}' (known: {', '.join(registry)})")
    return importlib.import_module(registry[name])
