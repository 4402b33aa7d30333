"""What every online RL task does with its policy: sample completions on the decode engine inside the worker,
lay prompt + completion out as training rows, and read back each completion token's log-probability.

Rollouts run on :class:`rayft.generate.engine.DecodeEngine` (the batched decoding ``rayft serve`` uses), not over
HTTP. Under DeepSpeed ZeRO-3 every forward gathers partitioned weights collectively, so ranks whose rollouts end
after different numbers of decode steps would wait on each other forever: the weights are gathered once for the
whole rollout and ZeRO-3's hooks are lifted meanwhile (TRL's ``remove_hooks``/``add_hooks``, as its trainers do
for generation).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from rayft.data.collate import IGNORE_INDEX
from rayft.generate.engine import DecodeEngine
from rayft.generate.outputs import Request
from rayft.generate.params import EngineConfig, SamplingParams
from rayft.generate.runners import policy_adapter


@contextlib.contextmanager
def generating(model: Any) -> Iterator[Any]:
    """The bare module of ``model`` (a DeepSpeed engine or a module), ready to decode on its own; under ZeRO-3
    with its weights gathered and the partitioning hooks lifted until the block ends."""
    inner = getattr(model, "module", model)
    if not _zero3(model):
        yield inner
        return
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with deepspeed.zero.GatheredParameters(list(inner.parameters())):
        remove_hooks(model)
        try:
            yield inner
        finally:
            add_hooks(model)


def _zero3(model: Any) -> bool:
    config = getattr(model, "zero_optimization_stage", None)
    return callable(config) and config() == 3


def rollout(model: Any, tokenizer: Any, prompts: list[list[int]],
            params: SamplingParams | list[SamplingParams]) -> list[list[list[int]]]:
    """``n`` completions of each prompt (its own ``params`` when a list is given, one per prompt), decoded as one
    continuous batch; each ends with the end-of-sequence token when the model emitted it. ``model``: a DeepSpeed
    engine or a module; its training mode is restored afterwards."""
    each = params if isinstance(params, list) else [params] * len(prompts)
    n = max((p.n for p in each), default=1)
    running = len(prompts) * n
    config = EngineConfig(max_running=running, max_queued=len(prompts), max_n=n,
                          step_tokens=max(running + 1, sum(map(len, prompts)) + running))
    with generating(model) as inner:
        training = inner.training
        engine = DecodeEngine(inner, tokenizer, config, inference_mode=False)  # the model trains after this
        adapter = policy_adapter(inner)
        try:
            handles = [engine.add(Request(tuple(ids), p, adapter)) for ids, p in zip(prompts, each)]
            while engine.has_work():
                engine.step()
        finally:
            inner.train(training)
    eos = sorted(engine.eos)[:1]
    return [[list(c.token_ids) + (eos if c.finish_reason == "stop" else []) for c in h.result(timeout=0).choices]
            for h in handles]


def sequences(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompt + completion rows, right-padded; ``labels`` mark the completion tokens (the rest is ignored)."""
    rows = [p + c for p, c in zip(prompts, completions)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, : len(p) + len(c)] = 1
        labels[i, len(p): len(p) + len(c)] = torch.tensor(c, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass(frozen=True)
class CompletionOutputs:
    """Per completion token of prompt + completion rows, each ``[rows, width - 1]`` (index ``t`` is what the
    position ``t`` predicts: the token at ``t + 1``), zero outside ``mask``."""

    logps: torch.Tensor  # the policy's log-probability of the token
    mask: torch.Tensor  # 1 where the token is a completion token
    values: torch.Tensor | None = None  # the value head's estimate at the position before it (PPO)
    entropy: torch.Tensor | None = None  # the policy's entropy there (detached)
    slots: int = 0  # token positions the forward ran (padding included): the rows' real tokens / slots is its fill


def completion_outputs(model: Any, batch: dict[str, torch.Tensor], *, packed: bool = False, values: bool = False,
                       entropy: bool = False) -> CompletionOutputs:
    """One forward of the policy (or reference) over :func:`sequences`' rows: see :class:`CompletionOutputs`.

    ``packed``: the rows go in several to a row (:func:`rayft.data.packing.pack_rows`), attention kept within each
    by its position ids, and the outputs come back in the padded layout, the same numbers as the padded forward.
    Prompt-learning adapters prepend virtual tokens to every row: their positions are dropped (padded only; the
    config check refuses packing with them).
    """
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    from rayft.data.packing import pack_rows
    from rayft.rl.ppo import value_head
    from rayft.tasks.sft import model_inputs

    labels = batch["labels"][:, 1:]
    mask = (labels != IGNORE_INDEX).float()
    if packed:
        rows = pack_rows(batch["input_ids"], batch["attention_mask"])
        out = model(input_ids=rows.input_ids, position_ids=rows.position_ids, use_cache=False,
                     output_hidden_states=values)
        logits, targets = out.logits[:, :-1].float(), rows.input_ids[:, 1:]  # within a sequence: its next token
        slots = rows.input_ids.numel()

        def back(x: torch.Tensor) -> torch.Tensor:
            return rows.unpack(x)[:, :-1]
    else:
        width = batch["input_ids"].size(1)
        out = model(**model_inputs(batch, ("input_ids", "attention_mask", "position_ids")), output_hidden_states=values)
        logits, targets = out.logits[:, -width:][:, :-1].float(), labels.clamp(min=0)  # virtual tokens dropped
        slots = batch["input_ids"].numel()

        def back(x: torch.Tensor) -> torch.Tensor:
            return x
    logps = back(selective_log_softmax(logits, targets)) * mask
    value = ent = None
    if values:
        head = value_head(model)
        hidden = out.hidden_states[-1][:, -logits.size(1) - 1:][:, :-1]
        value = back(head(hidden.to(head.summary.weight.dtype)).float()) * mask
    if entropy:
        ent = back(entropy_from_logits(logits.detach())) * mask
    return CompletionOutputs(logps, mask, value, ent, slots)


def token_logps(model: Any, batch: dict[str, torch.Tensor], packed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of each row's labelled tokens ``[rows, width - 1]``, and their 0/1 mask."""
    out = completion_outputs(model, batch, packed=packed)
    return out.logps, out.mask
