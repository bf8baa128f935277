"""The openai backend: any OpenAI-compatible server (Ollama, vLLM, llama.cpp's server)
through Pipecat's OpenAI service, with the example exchanges and without echoes."""

from __future__ import annotations

from pipecat.services.openai.llm import OpenAILLMService

from agent.llm.prompt import history, with_examples
from pipelines.services.llm import ApologizesOnFailure


def load(config, cpu) -> None:
    """Nothing to load: the server holds the model."""
    return None


def service(_engine: None, config, session_id: str, settings) -> ServerLLMService:
    llm = config.llm
    return ServerLLMService(
        api_key=llm.api_key,
        base_url=llm.base_url,
        examples=[tuple(pair) for pair in llm.examples],
        history_replies=llm.history_replies,
        drop_refusals=llm.drop_refusals,
        timeout_secs=llm.request_timeout_secs,
        apology=llm.apology,
        settings=settings,
    )


class ServerLLMService(ApologizesOnFailure, OpenAILLMService):
    """Pipecat's OpenAI service for an OpenAI-compatible server, with example exchanges.
    ``timeout_secs``: the longest wait for the server's first or next word (a stalled
    server ends the reply with the apology instead of holding the caller)."""

    def __init__(
        self,
        *,
        examples: list[tuple[str, str]] = (),
        history_replies: str = "whole",
        drop_refusals: bool = False,
        timeout_secs: float = 10.0,
        **kwargs,
    ):
        self._timeout_secs = timeout_secs  # create_client, called by __init__, reads it
        super().__init__(**kwargs)
        self._examples = list(examples)
        self._history = {"replies": history_replies, "drop_refusals": drop_refusals}

    def create_client(self, *args, **kwargs):
        # One quick retry (a restarted server), then the apology: no minute-long backoff.
        client = super().create_client(*args, **kwargs)
        return client.with_options(timeout=self._timeout_secs, max_retries=1)

    def build_chat_completion_params(self, params_from_context) -> dict:
        params = super().build_chat_completion_params(params_from_context)
        params["messages"] = with_examples(
            history(params["messages"], **self._history), self._examples
        )
        return params
