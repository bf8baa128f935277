"""Many conversations in one llama.cpp context, decoded together, first words first.

Each session owns a sequence of one KV cache (llama.cpp's ``n_seq_max`` with a unified
cache), so its conversation stays read between turns and nothing is swapped when
sessions take turns. One thread owns the context. Each step it decodes one batch of the
most urgent work there is:

1. a reply still reading its prompt or writing its first phrase, the oldest first: the
   words a caller waits for in silence (one at a time: on 2 cores a batch of B tokens
   costs about B single steps, so sharing would make every first phrase late);
2. else the rest of every reply, decoded together: a voice speaks ~3 tokens a second and
   the model writes ~20, so a reply whose first phrase is being spoken can wait while a
   new caller's first words are written, instead of that caller waiting for it to end;
3. else reading ahead (the next turn's prompt, read while a reply plays), one at a time.

A new prompt reuses the longest prefix already read, its own sequence's or (copied
within the cache, no compute) another's: the system prompt and examples every session
shares are read once.

Knows tokens only; agent/llm/local.py turns chat messages into tokens and tokens into text.
"""

from __future__ import annotations

import ctypes
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from agent.cpu_share import CpuShare

# A reply is urgent until it has this many tokens: about the first phrase the TTS speaks
# on its own (pipelines/turns/first_clause.py) and a few words beyond.
FIRST_PHRASE_TOKENS = 12
# The most prompt tokens one job reads in one step, so a long prompt does not hold up
# every other caller's first words for seconds.
PROMPT_CHUNK_TOKENS = 64
# The same for reading ahead, which no one waits for: a reply that arrives meanwhile
# waits for the step to end (~14 ms a token on 2 cores for the 1.5B, so ~0.25 s).
READ_AHEAD_CHUNK_TOKENS = 16
BATCH_TOKENS = 512
# A gap in a conversation (its oldest exchanges dropped) is closed when what follows it
# in the cache matches the new prompt for at least this many tokens.
GAP_MATCH_TOKENS = 32
# A token refused (``generate(refuse=...)``) is sampled again without it, at most this
# many times for one position; then the last one sampled is taken.
REFUSALS_PER_TOKEN = 8
# llama.cpp's DRY sampler (``Sampling.dry``): a run of this many tokens said before is
# free ("I'm sorry" may open many replies), each token beyond multiplies the penalty by
# DRY_BASE (llama.cpp's defaults); a run does not reach across these strings.
DRY_ALLOWED = 2
DRY_BASE = 1.75
DRY_BREAKERS = (b"\n", b":", b'"', b"*")
DRY_LOOK_BACK = 1024  # tokens of what was said before, the reply's own included

# ``refuse(written, token)``: whether a reply that has written ``written`` must not go on
# with ``token`` (an end-of-generation token included).
Refusal = Callable[[list[int], int], bool]


class ContextFullError(RuntimeError):
    pass


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    seed: int | None = None
    # Said before (tokens; texts apart separated by a line break): a token that would go on
    # saying a run of them again word for word is made less likely the longer the run
    # (llama.cpp's DRY sampler: ``dry`` times DRY_BASE ** (run - DRY_ALLOWED)), so a reply
    # turns away from a repeat as it begins instead of being written again after it.
    said_before: tuple[int, ...] = ()
    dry: float = 0.0


@dataclass(eq=False)
class _Sequence:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds, in order
    last_used: float = 0.0


_DONE = object()


class Generation:
    """A job's output: ``for token in generation`` blocks for each sampled token and
    ends when the job does (``finish_reason``: "stop", "length", "read" or "cancelled");
    an engine error is raised by the loop. ``cancel()`` is safe from any thread."""

    def __init__(self, engine: BatchedEngine):
        self._engine = engine
        self._out: queue.Queue = queue.Queue()
        self.cancelled = False
        self.finish_reason: str | None = None
        self.reused_tokens = 0  # prompt tokens that were already read
        self.prompt_tokens = 0
        self.held_tokens = 0  # what the session's sequence held when the job started
        self.asked_at = time.monotonic()
        self.started_at: float | None = None  # when the engine took the job up

    def __iter__(self) -> Iterator[int]:
        while True:
            item = self._out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def wait(self) -> str | None:
        for _ in self:
            pass
        return self.finish_reason

    def cancel(self) -> None:
        self.cancelled = True
        self._engine._wake()


@dataclass(eq=False)
class _Job:
    session: Hashable
    tokens: list[int]  # the prompt
    max_tokens: int  # 0: only read the prompt
    background: bool
    sampler: _Sampler | None
    out: Generation
    refuse: Refusal | None = None
    seq: _Sequence | None = None
    written: list[int] = field(default_factory=list)  # sampled so far
    pending: int | None = None  # sampled, not yet in the cache

    @property
    def unread(self) -> int:
        return len(self.tokens) - len(self.seq.tokens) if self.pending is None else 0

    @property
    def urgent(self) -> bool:
        return not self.background and (self.unread > 0 or len(self.written) < FIRST_PHRASE_TOKENS)

    def finish(self, reason: str) -> None:
        self.out.finish_reason = reason
        self.out._out.put(_DONE)

    def fail(self, error: BaseException) -> None:
        self.out._out.put(error)


class BatchedEngine:
    def __init__(
        self,
        model_path: Path,
        *,
        context_tokens: int,
        sequences: int,
        threads: int,
        cpu: CpuShare | None = None,
        one_at_a_time: bool = False,
        build: str = "auto",
    ):
        """``one_at_a_time``: jobs run whole, in arrival order, as a single-stream
        llama.cpp would run them (benchmarks/llm_batch.py compares). ``build``: which
        llama.cpp (agent/llm/llama_build.py)."""
        from agent.llm import llama_lib

        self._lib = lib = llama_lib.load(build)
        self.build = lib.build.name
        self.model = llama_lib.Model(model_path)
        params = lib.llama_context_default_params()
        params.n_ctx = context_tokens * sequences
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = sequences
        params.kv_unified = True  # sequences share cells: a common prefix is stored once
        params.n_threads = params.n_threads_batch = threads
        # Off, as llama-cpp-python's Llama had it: on a CPU, llama.cpp's automatic choice (flash
        # attention on) wrote tokens ~30 % slower for this small a model.
        params.flash_attn_type = llama_lib.FLASH_ATTN_DISABLED
        self._context = llama_lib.Context(self.model, params)
        self._can_shift = lib.llama_memory_can_shift(self._context.memory)
        self._batch = lib.llama_batch_init(BATCH_TOKENS, 0, 1)
        self._sequences = [_Sequence(i) for i in range(sequences)]
        self._owner: dict[Hashable, _Sequence] = {}
        self._cpu = cpu or CpuShare()
        self._one_at_a_time = one_at_a_time
        self._jobs: list[_Job] = []  # started, in arrival order
        self._waiting: list[_Job] = []  # not started: no sequence free yet
        self._calls: list[tuple[callable, queue.Queue]] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="llm", daemon=True)
        self._thread.start()

    # -- called from any thread ------------------------------------------------------

    def generate(
        self,
        session: Hashable,
        tokens: list[int],
        *,
        max_tokens: int,
        sampling: Sampling = Sampling(),
        background: bool = False,
        refuse: Refusal | None = None,
    ) -> Generation:
        """Read ``tokens`` into ``session``'s sequence, then sample up to ``max_tokens``,
        none that ``refuse`` refuses (it runs on the engine's thread, once per token
        sampled: keep it quick). A session's new job ends its earlier one."""
        if not tokens:
            raise ValueError("an empty prompt")
        out = Generation(self)
        sampler = self._sampler(sampling) if max_tokens > 0 else None
        job = _Job(session, list(tokens), max_tokens, background, sampler, out, refuse)
        with self._changed:
            if self._closed:
                raise RuntimeError("the LLM engine is closed")
            self._waiting.append(job)
            self._changed.notify_all()
        return out

    def call(self, work, *, wait: bool = True):
        """Run ``work()`` on the engine's thread between steps; with ``wait``, return its
        result."""
        done: queue.Queue = queue.Queue()
        with self._changed:
            self._calls.append((work, done))
            self._changed.notify_all()
        if not wait:
            return None
        ok, result = done.get()
        if not ok:
            raise result
        return result

    def forget(self, session: Hashable, *, wait: bool = True) -> None:
        """The session has ended: its jobs stop, its sequence is freed."""
        self.call(lambda: self._forget(session), wait=wait)

    def cached_tokens(self, session: Hashable) -> list[int]:
        return self.call(
            lambda: list(self._owner[session].tokens) if session in self._owner else []
        )

    def sessions(self) -> list[Hashable]:
        """The sessions whose conversations the cache holds."""
        return self.call(lambda: [k for k, seq in self._owner.items() if seq.tokens])

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(10)

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _sampler(self, sampling: Sampling) -> _Sampler:
        from agent.llm import llama_lib

        lib = self._lib
        first = []
        if sampling.dry > 0 and sampling.said_before:
            breakers = (ctypes.c_char_p * len(DRY_BREAKERS))(*DRY_BREAKERS)
            first.append(
                lib.llama_sampler_init_dry(
                    self.model.vocab,
                    sampling.dry,
                    DRY_BASE,
                    DRY_ALLOWED,
                    DRY_LOOK_BACK,
                    breakers,
                    len(DRY_BREAKERS),
                )
            )
        if sampling.temperature <= 0:
            chain = llama_lib.sampler_chain(*first, lib.llama_sampler_init_greedy())
        else:
            # The usual llama.cpp chat defaults (as llama-cpp-python's chat completion had
            # them, so replies read as they did): top-k 40, top-p 0.95, min-p 0.05, then
            # temperature.
            seed = llama_lib.DEFAULT_SEED if sampling.seed is None else sampling.seed
            chain = llama_lib.sampler_chain(
                *first,
                lib.llama_sampler_init_top_k(40),
                lib.llama_sampler_init_typical(1.0, 1),
                lib.llama_sampler_init_top_p(0.95, 1),
                lib.llama_sampler_init_min_p(0.05, 1),
                lib.llama_sampler_init_temp(sampling.temperature),
                lib.llama_sampler_init_dist(seed),
            )
        for token in sampling.said_before if first else ():
            lib.llama_sampler_accept(chain, token)  # what the DRY sampler looks back on
        return _Sampler(lib, chain)

    # -- the engine's thread -----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda: self._closed or self._calls or self._waiting or self._jobs
                )
                if self._closed:
                    break
                calls, self._calls = self._calls, []
                arrived, self._waiting = self._waiting, []
            for work, done in calls:
                try:
                    done.put((True, work()))
                except Exception as e:
                    done.put((False, e))
            for job in arrived:
                if not self._start(job):
                    with self._changed:
                        self._waiting.append(job)
            self._drop_cancelled()
            if not self._jobs:
                continue
            self._cpu.wait_for_urgent()
            self._step()
        for job in self._jobs + self._waiting:
            job.fail(RuntimeError("the LLM engine was closed"))

    def _start(self, job: _Job) -> bool:
        for other in self._jobs:
            if other.session == job.session:  # superseded (a cut reply, a stale read-ahead)
                if job.background and not other.background:
                    # Reading ahead never ends a reply: a guess at the turn's words that
                    # comes after the turn's own reply has begun is too late to help.
                    job.finish("cancelled")
                    return True
                self._end(other, "cancelled")
                break
        seq = self._sequence_for(job.session)
        if seq is None:
            return False
        memory = self._context.memory
        job.out.held_tokens = len(seq.tokens)
        job.out.started_at = time.monotonic()
        keep = _common_prefix(seq.tokens, job.tokens)
        donor = max(self._sequences, key=lambda s: _common_prefix(s.tokens, job.tokens))
        shared = _common_prefix(donor.tokens, job.tokens)
        if shared > keep:
            self._lib.llama_memory_seq_rm(memory, seq.seq_id, -1, -1)
            self._lib.llama_memory_seq_cp(memory, donor.seq_id, seq.seq_id, 0, shared)
            seq.tokens, keep = donor.tokens[:shared], shared
        keep = self._close_gap(seq, job.tokens, keep)
        # The last prompt token is read again: its logits give the first reply token.
        keep = min(keep, len(job.tokens) - 1)
        self._lib.llama_memory_seq_rm(memory, seq.seq_id, keep, -1)
        del seq.tokens[keep:]
        seq.last_used = time.monotonic()
        job.seq = seq
        job.out.reused_tokens = keep
        job.out.prompt_tokens = len(job.tokens)
        self._jobs.append(job)
        return True

    def _close_gap(self, seq: _Sequence, tokens: list[int], keep: int) -> int:
        """How much of ``tokens`` ``seq`` holds once a gap is closed: when a conversation's
        oldest exchanges were dropped (agent/llm/prompt.trim_history), what followed them
        is still in the cache, further on; its cells are moved back over the gap
        (llama.cpp turns their keys to the new positions) instead of being read again,
        which took seconds on 2 cores. Their values were computed with the dropped
        exchanges in view, as in llama.cpp's own context shift. Cells another sequence
        shares (copied prefixes) are never moved."""
        rest = tokens[keep:]
        held = seq.tokens
        if len(rest) < GAP_MATCH_TOKENS or not self._can_shift:
            return keep
        probe = rest[:GAP_MATCH_TOKENS]
        starts = range(keep + 1, len(held) - GAP_MATCH_TOKENS + 1)
        at = next(
            (i for i in starts if held[i] == probe[0] and held[i : i + GAP_MATCH_TOKENS] == probe),
            None,
        )
        if at is None:
            return keep
        gap = at - keep
        if any(o is not seq and _common_prefix(o.tokens, held) > keep for o in self._sequences):
            return keep
        moved = _common_prefix(held[keep + gap :], rest)
        lib, memory = self._lib, self._context.memory
        lib.llama_memory_seq_rm(memory, seq.seq_id, keep + gap + moved, -1)
        lib.llama_memory_seq_rm(memory, seq.seq_id, keep, keep + gap)
        lib.llama_memory_seq_add(memory, seq.seq_id, keep + gap, -1, -gap)
        seq.tokens = held[:keep] + held[keep + gap : keep + gap + moved]
        return keep + moved

    def _sequence_for(self, session: Hashable) -> _Sequence | None:
        if session in self._owner:
            return self._owner[session]
        owned = list(self._owner.values())
        free = [s for s in self._sequences if s not in owned]
        if free:
            seq = free[0]
        else:  # the sequence idle longest is reused (what it holds may be a shared prefix)
            idle = self._idle_longest()
            if idle is None:
                return None
            previous, seq = idle
            del self._owner[previous]
        self._owner[session] = seq
        return seq

    def _idle_longest(self, *, holding: bool = False) -> tuple[Hashable, _Sequence] | None:
        """The session whose sequence has no job running and was used longest ago (with
        ``holding``, of those whose sequence holds something)."""
        busy = {job.seq.seq_id for job in self._jobs}
        idle = [
            (k, s)
            for k, s in self._owner.items()
            if s.seq_id not in busy and (s.tokens or not holding)
        ]
        return min(idle, key=lambda item: item[1].last_used, default=None)

    def _end(self, job: _Job, reason: str) -> None:
        self._jobs.remove(job)
        job.finish(reason)

    def _forget(self, session: Hashable) -> None:
        for job in [j for j in self._jobs if j.session == session]:
            self._end(job, "cancelled")
        seq = self._owner.pop(session, None)
        if seq is not None:
            self._lib.llama_memory_seq_rm(self._context.memory, seq.seq_id, -1, -1)
            seq.tokens = []

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._jobs if j.out.cancelled]:
            self._end(job, "cancelled")

    def _chosen(self) -> list[_Job]:
        if self._one_at_a_time:
            return self._jobs[:1]
        replies = [j for j in self._jobs if not j.background]
        urgent = [j for j in replies if j.urgent]
        # First phrases one at a time, oldest first: shared, they would all come late
        # (on 2 cores a batch of B tokens costs B single steps).
        return urgent[:1] or replies or self._jobs[:1]

    def _step(self) -> None:
        lib, batch = self._lib, self._batch
        chosen = self._chosen()
        parts: list[tuple[_Job, list[int]]] = []
        n = 0
        for job in chosen:
            if job.pending is not None:
                tokens = [job.pending]
            else:
                start = len(job.seq.tokens)
                chunk = READ_AHEAD_CHUNK_TOKENS if job.background else PROMPT_CHUNK_TOKENS
                tokens = job.tokens[start : start + min(chunk, BATCH_TOKENS - n)]
            if not tokens:
                break
            for i, token in enumerate(tokens):
                batch.token[n + i] = token
                batch.pos[n + i] = len(job.seq.tokens) + i
                batch.n_seq_id[n + i] = 1
                batch.seq_id[n + i][0] = job.seq.seq_id
                batch.logits[n + i] = False
            wants_logits = job.max_tokens > 0 and (
                job.pending is not None or len(job.seq.tokens) + len(tokens) == len(job.tokens)
            )
            batch.logits[n + len(tokens) - 1] = wants_logits
            parts.append((job, tokens))
            n += len(tokens)
        batch.n_tokens = n
        status = lib.llama_decode(self._context.handle, batch)
        if status != 0:
            for job, _ in parts:  # nothing of a failed batch stays in the cache
                lib.llama_memory_seq_rm(
                    self._context.memory, job.seq.seq_id, len(job.seq.tokens), -1
                )
            if status == 1 and self._evict_idle():
                return  # room made; the same batch is built again next step
            error = (
                ContextFullError("the LLM's context is full")
                if status == 1
                else RuntimeError(f"llama_decode failed ({status})")
            )
            for job, _ in parts:
                self._jobs.remove(job)
                job.fail(error)
            return
        at = 0
        now = time.monotonic()
        for job, tokens in parts:
            job.seq.tokens += tokens
            job.seq.last_used = now
            job.pending = None
            at += len(tokens)
            if job.max_tokens == 0:
                if job.unread == 0:
                    self._end(job, "read")
                continue
            if job.unread > 0:
                continue
            token = self._sample(job, at - 1)
            if self.model.is_end(token):
                self._end(job, "stop")
                continue
            job.written.append(token)
            job.out._out.put(token)
            if len(job.written) >= job.max_tokens:
                self._end(job, "length")
            else:
                job.pending = token

    def _sample(self, job: _Job, index: int) -> int:
        """The job's next token, from the logits of the batch's ``index``-th token; one its
        ``refuse`` refuses is ruled out (its logit made -inf) and another sampled."""
        lib, context = self._lib, self._context.handle
        token = lib.llama_sampler_sample(job.sampler.chain, context, index)
        if job.refuse is None:
            return token
        for _ in range(REFUSALS_PER_TOKEN):
            if not job.refuse(job.written, token):
                break
            lib.llama_get_logits_ith(context, index)[token] = -math.inf
            token = lib.llama_sampler_sample(job.sampler.chain, context, index)
        return token

    def _evict_idle(self) -> bool:
        """Free the sequence of the session idle longest (its conversation is read again
        if it comes back). False when every sequence is in use."""
        idle = self._idle_longest(holding=True)
        if idle is None:
            return False
        session = idle[0]
        logger.info(
            f"LLM context full: the conversation of {session} is dropped (read again if it returns)"
        )
        self._forget(session)
        return True

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (part of a UTF-8 character, possibly)."""
        return self.model.piece(token)


class _Sampler:
    """A llama.cpp sampler chain, freed with its job."""

    def __init__(self, lib, chain):
        self.chain = chain
        self._free = lib.llama_sampler_free

    def __del__(self):
        self._free(self.chain)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
