"""Which llama.cpp build runs the LLM (agent/llm/llama_build.py): the choice, fetching
node-llama-cpp's build (from a local tarball: tests reach no registry), and both builds
answering with the same tiny model, each in a process of its own."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agent.llm import llama_build
from agent.llm.llama_build import LlamaBuildError, choose, fetch_npm_build, npm_folder


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "voice-agent"


def test_auto_is_the_wheels_build_until_the_faster_one_is_fetched(empty_cache):
    assert choose("auto").name == "xllamacpp"
    folder = npm_folder()
    folder.mkdir(parents=True)
    (folder / "libllama.v0.5.0.so").write_bytes(b"")
    chosen = choose("auto")
    assert (chosen.name == "node-llama-cpp") == llama_build.npm_supported()
    assert choose("xllamacpp").name == "xllamacpp"


def test_asking_for_a_build_that_is_not_there_says_how_to_get_it(empty_cache):
    with pytest.raises(LlamaBuildError, match="python -m agent.prepare"):
        choose("node-llama-cpp")
    with pytest.raises(LlamaBuildError, match="unknown llama.cpp build 'fastest'"):
        choose("fastest")


def test_the_config_names_a_build_or_says_which_it_may(tmp_path):
    from agent.config import ConfigError, load_config

    bad = tmp_path / "bad.yaml"
    default = Path(__file__).parent.parent / "configs" / "default.yaml"
    bad.write_text(default.read_text().replace("\nllm:\n", "\nllm:\n  runtime: fastest\n", 1))
    with pytest.raises(ConfigError, match="runtime"):
        load_config(str(bad))


def _tarball(files: dict[str, bytes]) -> tuple[bytes, str]:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    data = out.getvalue()
    return data, base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.mark.skipif(
    not llama_build.npm_supported(), reason="node-llama-cpp's build is Linux x86-64"
)
def test_a_fetched_build_is_checked_and_only_its_libraries_are_kept(empty_cache, tmp_path):
    bins = "package/bins/linux-x64/"
    data, sha512 = _tarball(
        {
            bins + "libllama.v0.5.0.so": b"llama",
            bins + "libggml-cpu-zen4.so": b"ggml",
            bins + "llama-addon.node": b"node addon",
            "package/LICENSE": b"MIT",
            "package/package.json": b"{}",
        }
    )
    tarball = tmp_path / "build.tgz"
    tarball.write_bytes(data)
    with pytest.raises(LlamaBuildError, match="SHA-512 differs"):
        fetch_npm_build(
            tarball.as_uri(), sha512.replace(sha512[0], "A" if sha512[0] != "A" else "B")
        )
    assert not npm_folder().parent.exists() or not any(npm_folder().parent.iterdir())
    folder = fetch_npm_build(tarball.as_uri(), sha512)
    assert sorted(p.name for p in folder.iterdir()) == [
        "LICENSE",
        "libggml-cpu-zen4.so",
        "libllama.v0.5.0.so",
    ]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging left


_ANSWER = """
import json, sys
from agent.config import load_config
from agent.llm import llama_lib
from agent.llm.local import LocalLLM
from agent.models import resolve_model

llm = LocalLLM(resolve_model(load_config("tiny").llm.model, "llm"), threads=2, build=sys.argv[1])
text = "".join(llm.stream_chat([{"role": "user", "content": "What is the capital of France?"}],
                                max_tokens=12, temperature=0.0, seed=0))
other = "xllamacpp" if sys.argv[1] != "xllamacpp" else "node-llama-cpp"
try:
    llama_lib.load(other)
    mixed = "loaded"
except llama_lib.LlamaLibraryError as e:
    mixed = str(e)
print(json.dumps({"build": llama_lib.load().build.name, "text": text, "mixed": mixed}))
llm.close()
"""


def _answer(build: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _ANSWER, build],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not (npm_folder() / "libllama.v0.5.0.so").is_file(),
    reason="node-llama-cpp's build is not fetched (python -m agent.prepare)",
)
def test_both_builds_answer_alike_and_a_process_runs_only_one():
    wheel, npm = _answer("xllamacpp"), _answer("node-llama-cpp")
    assert wheel["build"] == "xllamacpp" and npm["build"] == "node-llama-cpp"
    # The same model: the same greedy words at first. Where two words are nearly tied
    # greedy decoding may part later, as the builds' kernels round differently (with
    # AVX-512 the npm build runs other kernels than the wheel's: "L'Étoile, la
    # Marseillaise," against "L'Étoile, la Cité, la Nation").
    common = os.path.commonprefix([wheel["text"], npm["text"]])
    assert wheel["text"].strip() and len(common.strip()) >= 10, (wheel, npm)
    assert "already loaded" in wheel["mixed"] and "already loaded" in npm["mixed"]
