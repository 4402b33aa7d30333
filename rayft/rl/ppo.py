"""PPO's pieces for RLHF (Schulman et al. 2017; the recipe of Ziegler et al. 2019 and Ouyang et al. 2022, as in
"The N Implementation Details of RLHF with PPO", Huang et al. 2024).

For each rollout batch: the policy samples one completion per prompt; the reward model (and/or reward functions)
scores it; each completion token gets the reward ``-kl_coef * (log pi - log pi_ref)`` and the last one also gets
the score; a value head on the policy's last hidden state estimates the return; generalised advantage estimation
(GAE, Schulman et al. 2016) turns rewards and values into advantages, which are whitened over the batch. Then
several epochs of minibatch updates on the clipped policy loss plus ``vf_coef`` times the clipped value loss. The
KL coefficient is fixed, or adapted after every rollout batch towards a target KL (Ziegler et al.'s proportional
controller).

TRL 1.x no longer ships PPO (its ``PPOTrainer``, value head and masked whitening were removed) and its trainers own
their training loops, which cannot run inside a Ray Train + DeepSpeed worker loop: these few functions are written
here, on TRL's ``selective_log_softmax`` and ``entropy_from_logits``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

VALUE_HEAD = "v_head"


class ValueHead(torch.nn.Module):
    """A scalar value per position from the policy's last hidden state. It also keeps the adaptive KL coefficient
    as a buffer, so that DeepSpeed's checkpoints carry it across a resume."""

    def __init__(self, hidden_size: int, kl_coef: float) -> None:
        super().__init__()
        self.summary = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.summary.weight)  # values start at 0: no return is predicted before any is seen
        torch.nn.init.zeros_(self.summary.bias)
        self.register_buffer("kl_coef", torch.tensor(float(kl_coef)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden).squeeze(-1)


def attach_value_head(model: torch.nn.Module, kl_coef: float) -> ValueHead:
    """Give ``model`` a trainable value head (a submodule, so DeepSpeed optimises, partitions and checkpoints it)."""
    config = getattr(model, "config", None) or model.get_base_model().config
    head = ValueHead(config.hidden_size, kl_coef)
    model.add_module(VALUE_HEAD, head)
    return head


def value_head(model: Any) -> ValueHead:
    return getattr(getattr(model, "module", model), VALUE_HEAD)


@contextlib.contextmanager
def without_value_head(model: torch.nn.Module) -> Iterator[None]:
    """``model`` without its value head while the block runs: the saved result is the policy alone."""
    head = model._modules.pop(VALUE_HEAD, None)
    try:
        yield
    finally:
        if head is not None:
            model._modules[VALUE_HEAD] = head


def policy_outputs(model: Any, batch: dict[str, torch.Tensor], entropy: bool = False,
                   packed: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward of the policy over prompt + completion rows: per-token log-probabilities of the labelled tokens
    and the value at the position before each ``[rows, width - 1]``, and (on request) the policy's entropy there.
    ``packed``: several rows to a row (:func:`rayft.rl.rollouts.completion_outputs`)."""
    from rayft.rl.rollouts import completion_outputs

    out = completion_outputs(model, batch, packed=packed, values=True, entropy=entropy)
    return out.logps, out.values, out.entropy


def token_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: the KL penalty ``-kl_coef * (logp - ref_logp)`` on every completion token, plus the
    sequence's score on its last token. Returns (rewards, per-token KL estimate)."""
    kl = (logps - ref_logps) * mask
    rewards = -kl_coef * kl
    last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & mask.bool()  # each row's last completion token
    rewards = rewards + last.to(rewards.dtype) * scores.unsqueeze(1)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's completion tokens (positions outside ``mask`` hold no
    reward and no value): ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``.
    Returns (advantages, returns = advantages + values), zero outside ``mask``."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    width = rewards.size(1)
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        running = running * mask[:, t]  # a position outside the completion carries nothing back
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``values`` scaled to unit variance (and zero mean unless ``shift_mean`` is False) over the masked positions."""
    n = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / n
    var = (((values - mean) * mask) ** 2).sum() / n
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def ppo_losses(logps: torch.Tensor, values: torch.Tensor, old_logps: torch.Tensor, old_values: torch.Tensor,
               advantages: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float,
               clip_range_value: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(policy loss, value loss, figures) of one minibatch, averaged over its completion tokens.

    Policy: ``max(-A rho, -A clip(rho, 1 - eps, 1 + eps))``; value: ``0.5 max((V - R)^2, (clip(V, V_old +- c) -
    R)^2)``. Figures: ``clip_fraction`` (tokens whose ratio was clipped), ``value_clip_fraction``, ``approx_kl``
    (to the sampling policy, ``0.5 E[(log rho)^2]``).
    """
    n = mask.sum().clamp(min=1)
    log_ratio = (logps - old_logps) * mask
    ratio = torch.exp(log_ratio)
    pg = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range))
    policy_loss = (pg * mask).sum() / n
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    vf = torch.max((values - returns) ** 2, (clipped_values - returns) ** 2)
    value_loss = 0.5 * (vf * mask).sum() / n
    with torch.no_grad():
        figures = {
            "clip_fraction": float((((ratio - 1).abs() > clip_range).to(mask.dtype) * mask).sum() / n),
            "value_clip_fraction": float((((values - returns) ** 2 < (clipped_values - returns) ** 2)
                                          .to(mask.dtype) * mask).sum() / n),
            "approx_kl": float((0.5 * log_ratio ** 2 * mask).sum() / n),
        }
    return policy_loss, value_loss, figures


def adapt_kl(kl_coef: float, kl: float, target: float | None, horizon: int, batch: int) -> float:
    """The next KL coefficient: unchanged without a target, else Ziegler et al.'s proportional controller,
    ``coef * (1 + clip(kl / target - 1, -0.2, 0.2) * batch / horizon)``."""
    if target is None:
        return kl_coef
    error = max(-0.2, min(0.2, kl / target - 1))
    return kl_coef * (1 + error * batch / horizon)
