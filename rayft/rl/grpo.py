"""GRPO's pieces (Shao et al. 2024, "DeepSeekMath"): grouped rollouts on the decode engine, group-normalised
advantages, and the clipped surrogate with a KL penalty to the reference.

For each prompt the policy samples G completions (one prefill, G choices: the engine's ``n``); each completion's
reward is normalised within its group, ``A_i = (r_i - mean(r)) / (std(r) + eps)``, and every one of its tokens gets
that advantage. The loss per token is ``-min(rho A, clip(rho, 1 - eps, 1 + eps) A) + beta KL``, with ``rho`` the
ratio of the policy to the one that sampled (1 in value, but it carries the gradient) and ``KL`` the unbiased k3
estimator ``exp(ref - logp) - (ref - logp) - 1``; it is averaged over each completion's tokens, then over
completions. TRL computes the same inside its ``GRPOTrainer``, which owns its own training loop and cannot run
inside a Ray Train + DeepSpeed worker loop, so the few lines of the loss are here; TRL's
``selective_log_softmax`` gives the per-token log-probabilities.
"""

from __future__ import annotations

from typing import Any

import torch

from rayft.data.collate import IGNORE_INDEX
from rayft.generate.engine import DecodeEngine
from rayft.generate.outputs import Request
from rayft.generate.params import EngineConfig, SamplingParams
from rayft.generate.runners import policy_adapter


def rollout(model: Any, tokenizer: Any, prompts: list[list[int]], params: SamplingParams) -> list[list[list[int]]]:
    """``params.n`` completions of each prompt, decoded as one continuous batch; each ends with the end-of-sequence
    token when the model emitted it. The model's training mode is restored afterwards."""
    training = model.training
    n = params.n
    running = len(prompts) * n
    config = EngineConfig(max_running=running, max_queued=len(prompts), max_n=n,
                          step_tokens=max(running + 1, sum(map(len, prompts)) + running))
    engine = DecodeEngine(model, tokenizer, config, inference_mode=False)  # the model trains after this
    adapter = policy_adapter(model)
    try:
        handles = [engine.add(Request(tuple(ids), params, adapter)) for ids in prompts]
        while engine.has_work():
            engine.step()
    finally:
        model.train(training)
    eos = sorted(engine.eos)[:1]
    return [[list(c.token_ids) + (eos if c.finish_reason == "stop" else []) for c in h.result(timeout=0).choices]
            for h in handles]


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``[prompts, G]`` rewards normalised within each group (a group whose rewards are all equal gets zeros)."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True, unbiased=False) + eps)


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


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, epsilon: float, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate with the KL penalty, averaged per completion then over completions; and its figures
    (``kl``, ``clip_fraction``)."""
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    per_token = -surrogate
    kl = torch.zeros_like(logps)
    if ref_logps is not None and beta > 0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    lengths = mask.sum(1).clamp(min=1)
    loss = ((per_token * mask).sum(1) / lengths).mean()
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > epsilon).to(mask.dtype)
        figures = {"kl": float(((kl * mask).sum(1) / lengths).mean()),
                   "clip_fraction": float((clipped * mask).sum() / mask.sum().clamp(min=1))}
    return loss, figures
