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


def token_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of each row's labelled tokens ``[rows, width - 1]``, and their 0/1 mask."""
    from trl.trainer.utils import selective_log_softmax

    from rayft.tasks.sft import token_logits

    logits, labels = token_logits(model, batch)[:, :-1], batch["labels"][:, 1:]
    mask = (labels != IGNORE_INDEX).to(logits.dtype)
    return selective_log_softmax(logits, labels.clamp(min=0)) * mask, mask

