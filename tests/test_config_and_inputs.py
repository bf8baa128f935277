"""Bad configs, missing models and bad WAV inputs give errors that name the problem."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.audio import WavInputError, load_input_wav
from agent.config import CONFIG_DIR, ConfigError, load_config, parse_config
from agent.models import ModelNotFoundError, ModelRef, resolve_model
from tests.conftest import write_wav

ROOT = Path(__file__).resolve().parent.parent


def _default() -> dict:
    return yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_shipped_config_is_valid(name):
    load_config(name)


def test_unknown_key_is_named():
    data = _default()
    data["llm"]["temprature"] = 0.5
    with pytest.raises(ConfigError, match=r"unknown key 'llm\.temprature'"):
        parse_config(data)


def test_unknown_top_level_section_is_named():
    data = _default()
    data["speakers"] = {}
    with pytest.raises(ConfigError, match="unknown key 'speakers'"):
        parse_config(data)


def test_bad_value_is_named():
    data = _default()
    data["server"]["port"] = 99999
    with pytest.raises(ConfigError, match=r"server\.port"):
        parse_config(data)


def test_openai_backend_needs_a_server():
    data = _default()
    data["llm"] = {"backend": "openai"}
    with pytest.raises(ConfigError, match="base_url"):
        parse_config(data)


def test_unknown_key_from_the_command_line(tmp_path):
    data = _default()
    data["tts"]["pitch"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    run = subprocess.run(
        [
            sys.executable,
            "run_agent.py",
            "--config",
            str(bad),
            "--transport",
            "file",
            "--input",
            "x.wav",
            "--output",
            "y.wav",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "unknown key 'tts.pitch'" in run.stderr


def test_missing_package_says_what_to_install():
    ref = ModelRef(
        package="no_such_model_package", file="m.bin", install="pip install no-such-model-package"
    )
    with pytest.raises(ModelNotFoundError, match="pip install no-such-model-package"):
        resolve_model(ref, "asr")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match=str(tmp_path / "absent.gguf")):
        resolve_model(ModelRef(path=str(tmp_path / "absent.gguf")), "llm")


def test_a_reference_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        ModelRef(path="/x", package="y")


@pytest.fixture
def split_package(tmp_path, monkeypatch):
    """An importable package holding a model split into three parts."""
    package = tmp_path / "site" / "fake_split_model"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    blob = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    pieces = [blob[:100_000], blob[100_000:250_000], blob[250_000:]]
    for i, piece in enumerate(pieces):
        (package / "data" / f"part{i}.bin").write_bytes(piece)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("VOICE_AGENT_CACHE", str(tmp_path / "cache"))
    parts = [f"fake_split_model:data/part{i}.bin" for i in range(3)]
    return blob, parts


def test_split_parts_are_assembled_once_and_checked(split_package):
    blob, parts = split_package
    ref = ModelRef(
        parts=parts, file="model.bin", size=len(blob), sha256=hashlib.sha256(blob).hexdigest()
    )
    path = resolve_model(ref, "llm")
    assert path.read_bytes() == blob
    mtime = path.stat().st_mtime_ns
    assert resolve_model(ref, "llm").stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_parts_with_files_beside_them_are_a_folder(split_package):
    """A CTranslate2 model: model.bin from parts, its config next to it, the folder is the
    model; a config changed in the package is copied again."""
    blob, parts = split_package
    package = Path(importlib.util.find_spec("fake_split_model").submodule_search_locations[0])
    (package / "data" / "config.json").write_text('{"a": 1}')
    ref = ModelRef(
        parts=parts,
        beside=["fake_split_model:data/config.json"],
        file="whisper/model.bin",
        size=len(blob),
    )
    folder = resolve_model(ref, "asr")
    assert folder.is_dir() and folder.name == "whisper"
    assert (folder / "model.bin").read_bytes() == blob
    assert (folder / "config.json").read_text() == '{"a": 1}'
    (package / "data" / "config.json").write_text('{"a": 22}')
    assert (resolve_model(ref, "asr") / "config.json").read_text() == '{"a": 22}'


def test_files_beside_need_parts():
    with pytest.raises(ValueError, match="beside"):
        ModelRef(package="x", file="m", beside=["x:c.json"])


def test_corrupt_parts_fail_the_checksum(split_package):
    blob, parts = split_package
    ref = ModelRef(parts=parts, file="model.bin", sha256="0" * 64)
    with pytest.raises(ModelNotFoundError, match="SHA-256"):
        resolve_model(ref, "llm")


def test_wrong_size_parts_are_refused(split_package):
    blob, parts = split_package
    ref = ModelRef(parts=parts, file="model.bin", size=len(blob) + 1)
    with pytest.raises(ModelNotFoundError, match="add up to"):
        resolve_model(ref, "llm")


# --- WAV inputs of file mode ---------------------------------------------------------


def _tone(secs: float, rate: int) -> np.ndarray:
    t = np.arange(int(secs * rate)) / rate
    return (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16)


def test_missing_wav(tmp_path):
    with pytest.raises(WavInputError, match="not found"):
        load_input_wav(tmp_path / "nope.wav", 16000)


def test_unreadable_wav(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunkjunkjunk")
    with pytest.raises(WavInputError, match="cannot read .*bad.wav"):
        load_input_wav(bad, 16000)


def test_empty_wav(tmp_path):
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000)
    with pytest.raises(WavInputError, match="no audio"):
        load_input_wav(empty, 16000)


def test_stereo_wav_is_mixed_down_and_said_so(tmp_path):
    mono = _tone(0.5, 16000)
    stereo = write_wav(
        tmp_path / "stereo.wav", np.stack([mono, mono], axis=1).reshape(-1), 16000, channels=2
    )
    samples, notes = load_input_wav(stereo, 16000)
    assert len(samples) == len(mono)
    assert any("mixed down to mono" in n for n in notes)


def test_other_rate_is_resampled_and_said_so(tmp_path):
    odd = write_wav(tmp_path / "odd.wav", _tone(1.0, 44100), 44100)
    samples, notes = load_input_wav(odd, 16000)
    assert abs(len(samples) - 16000) <= 2
    assert any("resampled from 44100 Hz to 16000 Hz" in n for n in notes)


def test_cli_reports_a_bad_wav_without_loading_models(tmp_path):
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000)
    run = subprocess.run(
        [
            sys.executable,
            "run_agent.py",
            "--config",
            "tiny",
            "--transport",
            "file",
            "--input",
            str(empty),
            "--output",
            str(tmp_path / "out.wav"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "no audio" in run.stderr and "empty.wav" in run.stderr


def _tiny() -> dict:
    return yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())


def _bad_configs(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """Config files a user could write, each with the words its error must contain."""
    not_a_model = tmp_path / "notes.gguf"
    not_a_model.write_text("these are my notes, not a model\n" * 10)
    voice = resolve_model(ModelRef(**_tiny()["tts"]["piper"]["model"]), "tts")
    fake_voice = tmp_path / "voice.onnx"
    fake_voice.write_bytes(b"\x00garbage" * 100)
    (tmp_path / "voice.onnx.json").write_bytes(Path(str(voice) + ".json").read_bytes())

    def tiny_with(update) -> bytes:
        data = _tiny()
        update(data)
        return yaml.safe_dump(data).encode()

    return {
        "not-utf8": (b"llm:\n  system_prompt: caf\xe9\n", "not UTF-8"),
        "duplicate-key": (
            (CONFIG_DIR / "tiny.yaml").read_bytes() + b"\nllm:\n  temperature: 0.9\n",
            "duplicate key 'llm'",
        ),
        "llm-not-gguf": (
            tiny_with(lambda d: d["llm"].update(model={"path": str(not_a_model)})),
            "not a GGUF model file",
        ),
        "piper-not-onnx": (
            tiny_with(lambda d: d["tts"]["piper"].update(model={"path": str(fake_voice)})),
            "is not a Piper voice",
        ),
        "huge-context": (
            tiny_with(lambda d: d["llm"].update(context_tokens=100_000_000)),
            "more than SmolLM2-135M-Instruct.Q4_1.gguf was trained for (8192)",
        ),
        "threads": (
            tiny_with(lambda d: d["llm"].update(threads=2000)),
            "llm.threads 2000 is more than twice",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["not-utf8", "duplicate-key", "llm-not-gguf", "piper-not-onnx", "huge-context", "threads"],
)
def test_a_bad_config_is_an_error_message_not_a_traceback(tmp_path, capsys, case):
    import run_agent

    content, words = _bad_configs(tmp_path)[case]
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    wav = write_wav(tmp_path / "in.wav", np.zeros(16000, np.int16), 16000)
    argv = ["--config", str(path), "--transport", "file", "--input", str(wav)]
    assert run_agent.main([*argv, "--output", str(tmp_path / "out.wav")]) == 2
    err = capsys.readouterr().err
    assert words in err, err


def test_ctrl_c_while_loading_is_a_line_not_a_traceback(tmp_path):
    import signal
    import time

    server = subprocess.Popen(
        [sys.executable, "run_agent.py", "--config", "tiny", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(4)  # importing and loading models
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()  # not left holding a port for the tests after it
    assert "Traceback" not in err, err[-2000:]


def _check(config: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run_agent.py", "--check", "--config", config],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )


def test_check_asks_one_question_through_the_pipeline_and_passes():
    run = _check("tiny")
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[-1] == "check passed"
    heard = next(line for line in lines if line.startswith("heard:"))
    assert "capital" in heard.lower() and "italy" in heard.lower()
    assert "voice_to_voice" in next(line for line in lines if line.startswith("latency:"))
    assert lines[0].startswith("models loaded: ") and "llm" in lines[0]
    # Pipecat logged an ERROR for the in-process LLM's unset settings at every start.
    assert "NOT_GIVEN" not in run.stderr + run.stdout, run.stderr[-2000:]


def test_check_fails_and_says_which_part_when_the_llm_server_is_down(tmp_path):
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    # A port nothing listens on: every reply fails and the caller hears the apology.
    data["llm"] = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1",
                   "model_name": "absent", "request_timeout_secs": 2}
    config = tmp_path / "down.yaml"
    config.write_text(yaml.safe_dump(data))
    run = _check(str(config))
    assert run.returncode == 1, run.stdout + run.stderr[-2000:]
    assert "check FAILED" in run.stdout
    assert any(line.startswith("problem: the LLM did not answer") for line in run.stdout.splitlines())
