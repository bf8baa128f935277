"""A node's side of the cluster's shared engines (pipelines/cluster/engines.py): objects
with the interface of the engines a node would load itself, which a call's services use
unchanged (``load_stack(config, llm=..., speech=...)``).

Every request names its call's session, so Serve routes it to the replica that holds the
conversation. Their methods are called where the in-process engines' are: requests are
sent from the event loop, streams are read on the services' own threads.
"""

from __future__ import annotations

from collections.abc import Generator, Hashable, Iterator

import numpy as np

from pipelines.cluster.engines import SpeechDone, handle
from tts.base import SpeechContext, SpeechEngine


def _for_session(handle, session: Hashable, *, stream: bool = False):
    """``handle`` routed by ``session`` (no session: any replica)."""
    return handle.options(multiplexed_model_id=str(session or ""), stream=stream)


class RemoteChatStream:
    """A reply's text pieces as the shared engine writes them (blocking per piece);
    ``cancel()``, from any thread, ends the reply on its replica."""

    finish_reason = "stop"  # the replica does not say; no service reads it

    def __init__(self, response):
        self._response = response  # a Serve DeploymentResponseGenerator

    def __iter__(self) -> Iterator[str]:
        yield from self._response

    def cancel(self) -> None:
        self._response.cancel()


class RemoteLLM:
    """The calls a node's LLM services make of agent/llm/local.py's LocalLLM, answered by
    the cluster's shared LLM engine."""

    def __init__(self, handle, name: str):
        self._handle = handle
        self.name = name

    @classmethod
    def connect(cls) -> RemoteLLM:
        """The shared LLM of the cluster this process has joined (blocking)."""
        llm = handle("llm")
        return cls(llm, llm.name.remote().result())

    def stream_chat(self, messages: list[dict], *, session: Hashable = None, **options):
        """LocalLLM.stream_chat's reply, written by the session's replica."""
        handle = _for_session(self._handle, session, stream=True)
        return RemoteChatStream(handle.stream_chat.remote(messages, options))

    def read_ahead(
        self, messages: list[dict], *, session: Hashable = None, reply: bool = False
    ) -> None:
        """LocalLLM.read_ahead on the session's replica; returns at once."""
        _for_session(self._handle, session).read_ahead.remote(messages, reply)

    def forget(self, session: Hashable, *, wait: bool = True) -> None:
        response = _for_session(self._handle, session).forget.remote()
        if wait:
            response.result()

    def held_by_one(self) -> tuple[str, list[str]]:
        """(some replica, the sessions whose conversations it keeps read), from whichever
        replica Serve picks (blocking): where calls' conversations are."""
        return self._handle.sessions.remote().result()

    def warm_up(self) -> None:
        for _ in self.stream_chat(
            [{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0.0, seed=0
        ):
            pass

    def close(self) -> None:
        """The engine is the cluster's: nothing of it is this node's to close."""


class RemoteSpeech(SpeechEngine):
    """The cluster's shared voice as this node's speech engine: each utterance's audio is
    made on the session's replica (a GPU node for MisoTTS) and streams back chunk by
    chunk; what the engine returns of it (MisoTTS's codes) comes back as from a local one."""

    def __init__(self, handle, sample_rate: int):
        self._handle = handle
        self.sample_rate = sample_rate

    @classmethod
    def connect(cls) -> RemoteSpeech:
        """The shared voice of the cluster this process has joined (blocking)."""
        voice = handle("tts")
        return cls(voice, voice.sample_rate.remote().result())

    def synthesize(self, text: str, context: SpeechContext) -> Generator[np.ndarray, None, object]:
        handle = _for_session(self._handle, context.session_id, stream=True)
        response = handle.synthesize.remote(text, context)
        ended = False
        try:
            for item in response:
                if isinstance(item, SpeechDone):
                    ended = True
                    return item.codes
                yield item
        finally:
            if not ended:  # stopped early (the reply was interrupted): stop the replica too
                response.cancel()

    def forget(self, session_id: str) -> None:
        _for_session(self._handle, session_id).forget.remote()
