"""The llama-cpp backend: one in-process llama.cpp engine (agent/llm) shared by every
session, behind Pipecat's OpenAI service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from loguru import logger
from openai.types.chat import ChatCompletionChunk
from pipecat.frames.frames import CancelFrame, EndFrame, Frame, StartFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.llm import OpenAILLMService

from agent.cpu_share import CpuShare
from agent.llm.local import LocalLLM
from agent.llm.prompt import trim_history, with_examples, without_echoes
from pipelines.services.llm import ApologizesOnFailure
from pipelines.services.threads import ThreadFedIterator, start_thread
from pipelines.turns.record import ReplyVoicedFrame


def load(config, cpu: CpuShare) -> LocalLLM:
    """The engine every session shares (``config``: an AgentConfig)."""
    return LocalLLM.from_config(config.llm, cpu=cpu, sessions=config.server.max_sessions)


def service(engine: LocalLLM, config, session_id: str, settings) -> LocalLLMService:
    llm = config.llm
    return LocalLLMService(
        llm=engine,
        max_history_turns=llm.max_history_turns,
        examples=[tuple(pair) for pair in llm.examples],
        session_id=session_id,
        apology=llm.apology,
        settings=settings,
    )


class LocalLLMService(ApologizesOnFailure, OpenAILLMService):
    """Pipecat's OpenAI LLM service with the HTTP call replaced by an in-process model.

    The local model's replies come as OpenAI chunks (agent/llm/local.py), so everything
    else Pipecat's OpenAI service does (context handling, text frames, metrics, errors) is
    reused as is.

    Reading the prompt is most of the first token's time on a CPU, so the conversation is
    read ahead (agent/llm/local.py): the system prompt and examples when the session
    starts, and, once a reply has been written and voiced (the TTS's ReplyVoicedFrame),
    the conversation with that reply and the opening of the user's next message, while
    the reply plays. The user's words are then all that is left to read when they have
    spoken.
    """

    def __init__(
        self,
        *,
        llm: LocalLLM,
        max_history_turns: int,
        examples: list[tuple[str, str]] = (),
        session_id: str | None = None,
        **kwargs,
    ):
        super().__init__(api_key="in-process", base_url="http://in-process.invalid/v1", **kwargs)
        self._llm = llm
        self._max_history_turns = max_history_turns
        self._examples = list(examples)
        self._session_id = session_id
        self._next_prompt: list[dict] | None = None  # a written reply's, until it is voiced

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, ReplyVoicedFrame):
            # The reply's speech is made: reading ahead no longer competes with it.
            if self._next_prompt is not None:
                self._read_ahead(self._next_prompt)
                self._next_prompt = None
            return
        await super().process_frame(frame, direction)

    async def start(self, frame: StartFrame):
        await super().start(frame)
        self._read_ahead(self._next_user_prompt(await self._chat_messages(LLMContext())))

    async def stop(self, frame: EndFrame):
        await super().stop(frame)
        self._llm.forget(self._session_id, wait=False)

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        self._llm.forget(self._session_id, wait=False)

    async def _chat_messages(self, context: LLMContext) -> list[dict]:
        adapter = self.get_llm_adapter()
        params = await adapter.get_llm_invocation_params(
            context,
            system_instruction=self.settings.system_instruction,
            convert_developer_to_user=True,
        )
        return params["messages"]

    def _prompt(self, messages: list[dict]) -> list[dict]:
        """The messages the model reads for a conversation ending in a user message."""
        messages = trim_history(without_echoes(messages), self._max_history_turns)
        return with_examples(messages, self._examples)

    def _next_user_prompt(self, messages: list[dict]) -> list[dict]:
        """What the prompt of the next user message will begin with, trimmed as the next
        turn's will be."""
        return self._prompt(messages + [{"role": "user", "content": "..."}])[:-1]

    def _read_ahead(self, prompt: list[dict]):
        """Read ``prompt`` off the critical path. It gives way to every reply and to the
        synthesis of a first phrase (agent/cpu_share.py): on 2 cores, reading ahead beside
        Piper made the reply's first audio twice as slow."""
        try:
            self._llm.read_ahead(prompt, session=self._session_id)
        except Exception as e:  # the next turn reads its prompt itself; say why
            logger.warning(f"{self}: reading ahead failed: {e}")

    async def get_chat_completions(self, context) -> AsyncIterator[ChatCompletionChunk]:
        messages = await self._chat_messages(context)

        async def read_ahead(reply: str):  # once it has been voiced
            written = messages + [{"role": "assistant", "content": reply}]
            self._next_prompt = self._next_user_prompt(written)

        return _ThreadedChunkStream(
            self._llm,
            self._prompt(messages),
            on_complete=read_ahead,
            max_tokens=self.settings.max_tokens,
            temperature=self.settings.temperature,
            seed=self.settings.seed,
            session=self._session_id,
        )


class _ThreadedChunkStream:
    """LocalLLM's chunks, generated by its engine, as Pipecat's chunk stream.
    ``on_complete`` gets the reply's text when the model finished it (not when stopped)."""

    def __init__(
        self,
        llm: LocalLLM,
        messages: list[dict],
        *,
        on_complete: Callable[[str], Awaitable[None]] | None = None,
        **options,
    ):
        self._stream = llm.stream_chat(messages, **options)
        self._chunks = ThreadFedIterator(lambda: self._stream, start_thread)
        self._on_complete = on_complete
        self._text: list[str] = []
        self._closed = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        # Errors are surfaced to Pipecat, which reports them as an ErrorFrame.
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            if self._on_complete is not None and not self._closed:
                await self._on_complete("".join(self._text).strip())
            raise
        chunk.setdefault("object", "chat.completion.chunk")
        for choice in chunk.get("choices", ()):
            self._text.append((choice.get("delta") or {}).get("content") or "")
        return ChatCompletionChunk.model_validate(chunk)

    async def aclose(self):
        # An interruption or a closing session stops generation at the next token.
        self._closed = True
        self._stream.cancel()
        self._chunks.stop()


