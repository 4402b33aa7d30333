"""A continuous-batching decode engine over one causal LM (optionally a ``PeftModel`` holding several adapters).

Scheduling is per iteration, as in vLLM: each :meth:`DecodeEngine.step` admits waiting requests while the number of
running sequences stays within ``max_running``, then spends a token budget (``step_tokens``): first one decode
token for every running sequence, then what is left on prompt chunks of admitted requests, oldest first. A long
prompt is thus prefilled over several steps and never stalls the running sequences for more than one chunk.
Finished sequences (end-of-sequence token, ``max_tokens``, a stop string, a cancel) leave at the end of the step
and their cache rows are freed; a new sequence joins its group's batch as soon as its prompt is prefilled.

Sequences run in groups that share one forward (see :mod:`rayft.generate.runners`): the bare base, every plain-LoRA
adapter (peft's mixed-batch ``adapter_names``) and every prompt-learning adapter together; DoRA, IA3 and the other
tuners peft cannot mix one group per adapter. A
step is one decode forward per group with running sequences plus one forward per prompt chunk; a chunk is not
folded into the decode forward, as without a varlen attention kernel that would pad every decode row to the
chunk's length.

KV cache: each group keeps one padded batch ``DynamicCache`` (:mod:`rayft.generate.cache`), changed only when a
sequence joins or leaves; the alternative, one cache per sequence re-stacked into a batch before every forward,
copies every row's whole cache each step on top of the copy ``DynamicCache.update`` already makes: over a quarter
of a batched decode step's time on smollm2-135m, more on smaller models (``benchmarks/generation_engine.py``, figures
in docs/benchmarks.md), for no gain in what the forward computes. Padding costs attention over the pad columns,
which are trimmed when the longest rows leave.

Why not transformers' own continuous batching (``generate_batch`` / ``ContinuousBatchingManager``): it packs all
requests into one ``[1, tokens]`` row over a paged cache and takes no adapter per request, while peft's
``adapter_names`` selects adapters by batch row, so mixed adapters cannot share its forward.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import torch

from rayft.generate.cache import BatchCache
from rayft.generate.metrics import GenerationMetrics
from rayft.generate.outputs import Event, Handle, Request, Usage
from rayft.generate.params import EngineConfig, RequestError, check_request
from rayft.generate.runners import SHARED, Runner, begin, group_key, is_peft, make_runner, virtual_tokens
from rayft.generate.sampling import TextStream, make_generator, next_token


class EngineFull(RequestError):
    """The engine's queue is full; the caller should retry later (a server answers 429)."""


class _Job:
    """One admitted or waiting request: its prompt's progress, then its choices."""

    def __init__(self, handle: Handle, key: tuple[str, str | None], offset: int, limit: int) -> None:
        self.handle, self.key, self.offset, self.limit = handle, key, offset, limit
        self.request: Request = handle.request
        self.prompt = list(self.request.prompt_ids)
        self.done = 0  # prompt tokens prefilled
        self.state: BatchCache | None = None
        self.seqs: list[_Seq] = []
        self.live = self.request.params.n  # choices not finished yet
        self.added = time.perf_counter()  # time to first token counts from here

    def usage(self) -> Usage:
        return Usage(len(self.prompt), sum(len(s.out) for s in self.seqs))


class _Seq:
    """One choice being decoded: its tokens, text, random source and next position."""

    def __init__(self, job: _Job, index: int, tokenizer: Any, position: int) -> None:
        self.job, self.index, self.position = job, index, position
        self.stream = TextStream(tokenizer, job.request.params.stop)
        self.gen = make_generator(job.request.params, index)
        self.out: list[int] = []
        self.pending = -1  # the last sampled token, fed in the next decode forward
        self.finish: str | None = None
        self.last = 0.0  # when the previous token was sampled (0: none yet)


class _Group:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.cache: BatchCache | None = None
        self.seqs: list[_Seq] = []


class DecodeEngine:
    """Iteration-level batching of generation requests on one model; drive it with :meth:`step` (or EngineLoop).

    ``model`` is a causal LM or a ``PeftModel`` with its adapters; ``prompt_adapters`` maps more adapter names to
    prompt-learning ``PeftModel``s on the same base weights (peft cannot hold them in a LoRA model): only their
    prompt encoders are used, the forward passes run on ``model``. ``add`` and ``cancel`` may be called from any
    thread; ``step`` from one thread at a time. The adapters of ``model`` are read at each ``add``, so adapters
    loaded into it later are served (load them while no step runs); :meth:`set_model` swaps the model itself.
    ``metrics`` (shared by several engines, if wanted) receives tokens, latencies and finished requests.
    ``inference_mode=False`` steps under ``no_grad`` instead, for a model that trains between rollouts: tensors
    made in inference mode (DeepSpeed ZeRO-3's gathered weights, say) could not take part in its backward.
    """

    def __init__(self, model: Any, tokenizer: Any, config: EngineConfig | None = None,
                 eos_token_ids: list[int] | None = None, prompt_adapters: dict[str, Any] | None = None,
                 metrics: GenerationMetrics | None = None, inference_mode: bool = True) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.inference_mode = inference_mode
        self._extra = dict(prompt_adapters or {})
        _sources(model, self._extra)  # checks the prompt-learning models now
        self.metrics = metrics or GenerationMetrics()
        self.config = config or EngineConfig()
        self.context = getattr(model.config, "max_position_embeddings", None) or 1 << 30
        self.eos = set(eos_token_ids if eos_token_ids is not None else _eos_ids(model, tokenizer))
        self._lock = threading.Lock()  # guards _inbox and _cancels
        self._inbox: list[_Job] = []
        self._cancels: set[str] = set()
        self._waiting: deque[_Job] = deque()
        self._prefilling: list[_Job] = []
        self._jobs: dict[str, _Job] = {}  # admitted, not finished
        self._groups: dict[tuple[str, str | None], _Group] = {}
        self._running = 0  # sequences of admitted, unfinished requests (read by stats() from any thread)

    @property
    def sources(self) -> dict[str, Any]:
        """Every adapter the engine can serve, mapped to the model that holds it."""
        return _sources(self.model, self._extra)

    def set_model(self, model: Any) -> None:
        """Serves ``model`` from now on: the same base weights, wrapped anew (a ``PeftModel`` made around the bare
        base when its first adapter loads). Running sequences keep their caches; call it while no step runs."""
        self.model = model.eval()
        for key, group in self._groups.items():
            group.runner = make_runner(model, key)

    def adapters_changed(self) -> None:
        """Adapters of the model were loaded, refilled with new weights or deleted (call it while no step runs, or
        before a request for a new adapter is added)."""
        for group in self._groups.values():
            group.runner.adapters_changed()

    # ------------------------------------------------------------ the caller's side

    def add(self, request: Request) -> Handle:
        """Queues a request; its events go to the returned handle (or the request's sink).

        Raises:
            RequestError: an unknown adapter, a prompt or ``max_tokens`` that does not fit the context, ``n`` above
                the limit.
            EngineFull: ``max_queued`` requests are already waiting.
        """
        sources = self.sources
        if request.adapter is not None and request.adapter not in sources:
            raise RequestError("adapter", request.adapter, f"one of the loaded adapters {sorted(sources)} or None",
                               "model_not_found")
        offset = virtual_tokens(sources.get(request.adapter), request.adapter)
        check_request(request.params, len(request.prompt_ids) + offset, self.context, self.config.max_n)
        key = group_key(self.model, request.adapter if request.adapter in _own(self.model) else None)
        job = _Job(Handle(request), key, offset,
                   min(request.params.max_tokens, self.context - offset - len(request.prompt_ids)))
        with self._lock:
            if len(self._inbox) + len(self._waiting) >= self.config.max_queued:
                self.metrics.count("rejected")
                raise EngineFull("queue", len(self._inbox) + len(self._waiting),
                                 f"fewer than {self.config.max_queued} waiting requests; retry later", "queue_full")
            self._inbox.append(job)
        return job.handle

    def cancel(self, request_id: str) -> None:
        """Ends a request at the next step (a client that went away): its slot and cache rows are freed."""
        with self._lock:
            self._cancels.add(request_id)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._inbox or self._cancels or self._waiting or self._jobs)

    def stats(self) -> dict[str, int]:
        return {"running": self._running, "waiting": len(self._waiting) + len(self._inbox)}

    # ------------------------------------------------------------ one iteration

    def step(self) -> None:
        """Admit, decode one token for every running sequence, prefill within the budget, retire finished ones."""
        with self._lock:
            self._waiting.extend(self._inbox)
            self._inbox, cancels, self._cancels = [], self._cancels, set()
        for request_id in cancels:
            self._cancel_now(request_id)
        self._retire()
        self._admit()
        budget = self.config.step_tokens
        with torch.inference_mode() if self.inference_mode else torch.no_grad():
            for group in self._groups.values():
                if group.seqs:
                    budget -= self._guard(group.seqs, lambda g=group: self._decode(g), len(group.seqs))
            for job in list(self._prefilling):
                if budget <= 0:
                    break
                budget -= self._guard([job], lambda j=job, b=budget: self._prefill(j, b), 0)
        self._retire()

    def fail_all(self, message: str) -> None:
        """Ends every request in flight or waiting with finish reason ``error`` (the step loop broke)."""
        with self._lock:
            self._waiting.extend(self._inbox)
            self._inbox = []
        for job in list(self._waiting) + list(self._jobs.values()):
            self._end_job(job, "error", message)
        self._waiting.clear()
        self._retire()

    # ------------------------------------------------------------ internals

    def _runner(self, key: tuple[str, str | None]) -> Runner:
        if key not in self._groups:
            self._groups[key] = _Group(make_runner(self.model, key))
        return self._groups[key].runner

    def _admit(self) -> None:
        while self._waiting and self._running + self._waiting[0].request.params.n <= self.config.max_running:
            job = self._waiting.popleft()
            self._running += job.request.params.n
            self._runner(job.key)  # groups are made here, on the stepping thread, never while one is iterated
            self._jobs[job.request.request_id] = job
            self._prefilling.append(job)

    def _guard(self, owners: list[Any], work, spent: int) -> int:
        """Runs ``work`` (returns the tokens it used); a failure ends the requests it was for, not the engine."""
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - one group's or prompt's failure is its requests' alone
            message = f"{type(exc).__name__}: {exc}"
            for owner in owners:
                self._end_job(owner if isinstance(owner, _Job) else owner.job, "error", message)
            return spent

    def _decode(self, group: _Group) -> int:
        seqs = group.seqs
        device = group.runner.device
        ids = torch.tensor([[s.pending] for s in seqs], device=device)
        positions = torch.tensor([[s.position] for s in seqs], device=device)
        logits = group.runner.forward(ids, positions, group.cache, [s.job.request.adapter for s in seqs])
        for row, seq in enumerate(seqs):
            seq.position += 1
            if seq.finish is None:
                self._accept(seq, logits[row])
        return len(seqs)

    def _prefill(self, job: _Job, budget: int) -> int:
        runner = self._groups[job.key].runner
        if job.state is None:
            job.state = begin(self.sources.get(job.request.adapter), job.request.adapter, runner)
        chunk = job.prompt[job.done: job.done + budget]
        start = job.offset + job.done
        logits = runner.forward(torch.tensor([chunk], device=runner.device),
                                torch.arange(start, start + len(chunk), device=runner.device)[None], job.state,
                                [job.request.adapter])
        job.done += len(chunk)
        self.metrics.count("prompt_tokens", len(chunk))
        if job.done == len(job.prompt):
            self._prefilling.remove(job)
            self._start_choices(job, logits[0])
        return len(chunk)

    def _start_choices(self, job: _Job, logits: torch.Tensor) -> None:
        """The prompt is in the cache: fork it into ``n`` choices, sample their first tokens, join the group."""
        n = job.request.params.n
        state = job.state.repeat(n) if n > 1 else job.state
        job.state = None
        position = job.offset + len(job.prompt)
        job.seqs = [_Seq(job, i, self.tokenizer, position) for i in range(n)]
        group = self._groups[job.key]
        if group.cache is None:
            group.cache = state
        else:
            group.cache.extend(state)
        group.seqs.extend(job.seqs)
        for seq in job.seqs:
            self._accept(seq, logits)

    def _accept(self, seq: _Seq, logits: torch.Tensor) -> None:
        """Samples the next token of ``seq``, streams its text and decides whether the choice ends."""
        params = seq.job.request.params
        token = next_token(logits, params, seq.gen)
        now = time.perf_counter()
        if seq.last:
            self.metrics.inter_token(now - seq.last)
        else:
            self.metrics.first_token(now - seq.job.added)
        seq.last = now
        if token in self.eos or token in params.stop_token_ids:
            self._finish(seq, "stop", seq.stream.flush(), ())
            return
        seq.out.append(token)
        self.metrics.count("tokens_generated")
        seq.pending = token
        text = seq.stream.push(token)
        if seq.stream.stopped:
            self._finish(seq, "stop", text, (token,))
        elif len(seq.out) >= seq.job.limit:
            self._finish(seq, "length", text + seq.stream.flush(), (token,))
        else:
            seq.job.handle.emit(Event(seq.job.request.request_id, seq.index, text, (token,)))

    def _finish(self, seq: _Seq, reason: str, text: str, tokens: tuple[int, ...], error: str | None = None) -> None:
        seq.finish = reason
        job = seq.job
        job.live -= 1
        usage = job.usage() if job.live == 0 else None
        job.handle.emit(Event(job.request.request_id, seq.index, text, tokens, reason, usage, error))
        if job.live == 0:
            self.metrics.finished(reason)
            if self._jobs.pop(job.request.request_id, None) is not None:
                self._running -= job.request.params.n

    def _end_job(self, job: _Job, reason: str, error: str | None = None) -> None:
        """Ends every unfinished choice of ``job`` (cancelled, failed), wherever the job is."""
        if job in self._prefilling:
            self._prefilling.remove(job)
        job.state = None
        if not job.seqs:  # not prefilled yet: its choices exist only as indices
            job.seqs = [_Seq(job, i, self.tokenizer, 0) for i in range(job.request.params.n)]
        for seq in job.seqs:
            if seq.finish is None:
                self._finish(seq, reason, "", (), error)

    def _cancel_now(self, request_id: str) -> None:
        job = self._jobs.get(request_id) or next((j for j in self._waiting if j.request.request_id == request_id),
                                                 None)
        if job is None:
            return  # finished already, or never known
        if job in self._waiting:
            self._waiting.remove(job)
        self._end_job(job, "cancelled")

    def _retire(self) -> None:
        """Drops finished sequences and their cache rows, and the groups of adapters nothing runs on any more."""
        busy = {job.key for job in self._jobs.values()}
        for key in [k for k, g in self._groups.items() if k != SHARED and not g.seqs and k not in busy]:
            del self._groups[key]  # a solo adapter's group: the adapter may be gone from the model by now
        for group in self._groups.values():
            keep = [i for i, s in enumerate(group.seqs) if s.finish is None]
            if len(keep) == len(group.seqs):
                continue
            group.seqs = [group.seqs[i] for i in keep]
            if keep:
                group.cache.keep(keep)
            else:
                group.cache = None


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _own(model: Any) -> dict[str, Any]:
    return dict(model.peft_config) if is_peft(model) else {}


def _sources(model: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """The model that holds each adapter (its prompt encoder, for prompt learning).

    Raises:
        RequestError: an extra adapter that is not a prompt-learning ``PeftModel`` or whose name is taken.
    """
    sources = {name: model for name in _own(model)}
    for name, source in extra.items():
        if not is_peft(source) or name not in source.peft_config or not source.peft_config[name].is_prompt_learning:
            raise RequestError("prompt_adapters", name, "a prompt-learning PeftModel holding an adapter of that name")
        if name in sources:
            raise RequestError("prompt_adapters", name, "a name that no other adapter of the engine uses")
        sources[name] = source
    return sources
