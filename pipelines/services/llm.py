"""LLM backends: each is a module with ``load(config, cpu)`` (what every session shares,
loaded once per process: a model, or None) and ``service(shared, config, session_id,
settings)`` (one session's Pipecat LLM service), plus one entry in ``BACKENDS``;
``llm.backend`` in a config picks it by name. A reply that fails ends with a spoken sorry
(``ApologizesOnFailure``, mixed into every backend's service)."""

from __future__ import annotations

from types import ModuleType

from loguru import logger
from pipecat.frames.frames import Frame, LLMContextFrame, LLMTextFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.llm import OpenAILLMService

from agent.config import registered

BACKENDS: dict[str, str] = {
    "llama-cpp": "pipelines.services.llm_local",
    "openai": "pipelines.services.llm_server",
}


def backend(name: str) -> ModuleType:
    """The module of the backend ``llm.backend`` names."""
    return registered(BACKENDS, "llm.backend", name)


def llm_settings(config, shared) -> OpenAILLMService.Settings:
    """The settings every backend's service gets from ``config.llm``."""
    llm = config.llm
    return OpenAILLMService.Settings(
        model=llm.model_name or getattr(shared, "name", None),
        system_instruction=llm.system_prompt,
        temperature=llm.temperature,
        max_tokens=llm.max_tokens,
        seed=llm.seed,
    )


class ApologizesOnFailure:
    """Mixed into an LLM service: a reply that fails (the server refuses, stops answering
    or dies mid-reply) ends with a short spoken sorry instead of silence, inside the same
    response, so the rest of the turn (TTS, half-duplex, the context) goes as for any reply.
    Pipecat's service then reports the error upstream as usual; the session goes on."""

    def __init__(self, *args, apology: str = "", **kwargs):
        self._apology = apology
        self._replying = False
        super().__init__(*args, **kwargs)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if not isinstance(frame, LLMContextFrame):
            await super().process_frame(frame, direction)
            return
        self._replying = True
        try:
            await super().process_frame(frame, direction)
        finally:
            self._replying = False

    async def push_error(self, error_msg: str, exception: Exception | None = None, **kwargs):
        if self._replying and self._apology:
            logger.warning(f"{self}: the reply failed ({error_msg}); apologizing")
            await self.push_frame(LLMTextFrame(" " + self._apology))
        await super().push_error(error_msg, exception, **kwargs)
