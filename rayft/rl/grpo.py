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

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``[prompts, G]`` rewards normalised within each group (a group whose rewards are all equal gets zeros)."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True, unbiased=False) + eps)


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
