"""Proximal policy optimisation (PPO) from human-feedback-style rewards: the RLHF recipe on a causal LM.

The policy is the base plus any generating method; the reference is the base with its adapters disabled (a frozen
copy for full-weight methods); the reward is a stored ``reward_model``'s score (``task.reward_model``, checked by
task and base fingerprint before training) and/or reward functions. A value head on the policy's last hidden state
(shared backbone, as TRL's former ``AutoModelForCausalLMWithValueHead``) is trained alongside and left out of the
saved result. Dropout is switched off in the policy and the reference, as TRL's RL trainers do: the ratio of the
policy to the one that sampled must be exactly 1 before the first update.

Each training batch of prompts is one rollout batch (:meth:`PPO.losses`): one completion per prompt on the decode
engine (inside the worker), rewards with the KL penalty, GAE, whitened advantages; then ``ppo_epochs`` passes of
``num_minibatches`` updates each — so one batch takes ``ppo_epochs * num_minibatches`` optimizer steps, and
``train.max_steps`` / ``eval_every`` count those steps. The pieces are in :mod:`rayft.rl.ppo`.

Evaluation is :class:`~rayft.tasks.online_rl.OnlineRL`'s: one completion per held-out prompt, its reward, its
log-ratio to the reference and its length.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import torch
from pydantic import Field

from rayft.config.schema import ExperimentConfig
from rayft.data.packing import PACK_UPDATES
from rayft.errors import ConfigError, FieldError
from rayft.generate.params import SamplingParams
from rayft.tasks.base import register_task, task_params
from rayft.tasks.dpo import hold_reference, reference_logps_of
from rayft.tasks.online_rl import OnlineRL, OnlineRLParams, prompt_rows, tokenizer_of


class PPOParams(OnlineRLParams):
    ppo_epochs: int = Field(4, ge=1, le=32, description="passes over each rollout batch")
    num_minibatches: int = Field(1, ge=1, le=64, description="updates per pass (the rollout batch split this "
                                                             "many ways)")
    clip_range: float = Field(0.2, gt=0, lt=1, description="clip range of the policy ratio")
    clip_range_value: float = Field(0.2, gt=0, description="clip range of the value update")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    gamma: float = Field(1.0, gt=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's lambda")
    kl_coef: float = Field(0.05, ge=0, description="weight of the per-token KL penalty in the reward (initial "
                                                   "value when adaptive)")
    kl_target: float | None = Field(None, gt=0, description="adaptive KL: steer the completion's KL to the "
                                                            "reference towards this many nats (None: fixed "
                                                            "coefficient)")
    kl_horizon: int = Field(10000, ge=1, description="adaptive KL's horizon, in completions")
    whiten_rewards: bool = Field(False, description="scale the per-token rewards to unit variance per batch")


class PPO(OnlineRL):
    name = "ppo"
    params = PPOParams

    def tokenize(self, df, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        params = task_params(self, cfg)
        if params.num_minibatches > cfg.train.batch_size:
            raise ConfigError([FieldError("task.num_minibatches", params.num_minibatches,
                                          f"at most train.batch_size ({cfg.train.batch_size}): each minibatch "
                                          "needs a completion")])
        return super().tokenize(df, tokenizer, cfg, columns, labels)

    def prepare_model(self, model: torch.nn.Module, params: PPOParams) -> torch.nn.Module:
        """Reference (a frozen copy only where adapters cannot be switched off), dropout off, a value head."""
        from trl.trainer.utils import disable_dropout_in_model

        from rayft.rl.ppo import attach_value_head

        disable_dropout_in_model(model)
        hold_reference(model)
        attach_value_head(model, params.kl_coef)
        return super().prepare_model(model, params)

    def updates_per_batch(self, params: PPOParams) -> int:
        return params.ppo_epochs * params.num_minibatches

    @contextlib.contextmanager
    def saving(self, model: torch.nn.Module) -> Iterator[None]:
        from rayft.rl.ppo import without_value_head

        with without_value_head(model):
            yield

    def compute_loss(self, model: Any, batch: dict[str, Any], params: PPOParams) -> torch.Tensor:
        """The first update's loss of a fresh rollout (the training loop takes every update, see :meth:`losses`)."""
        return next(self.losses(model, batch, params))

    def losses(self, model: Any, batch: dict[str, Any], params: PPOParams) -> Iterator[torch.Tensor]:
        """Roll out, score and estimate advantages; then yield one loss per minibatch update, ``ppo_epochs``
        times over the batch (the loop steps the optimizer between them)."""
        from rayft.rl.ppo import (adapt_kl, gae, masked_whiten, policy_outputs, ppo_losses, token_rewards,
                                  value_head)
        from rayft.rl.rollouts import completion_outputs, rollout, sequences, token_logps

        inner = getattr(model, "module", model)
        tok = tokenizer_of(inner.config._name_or_path)
        prompts = prompt_rows(batch)
        sampling = SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                  top_p=params.top_p)
        started = time.perf_counter()
        completions = [group[0] for group in rollout(model, tok, prompts, sampling)]
        rollout_s = time.perf_counter() - started
        texts = [tok.decode(c, skip_special_tokens=True) for c in completions]
        device = batch["input_ids"].device
        scores = torch.tensor(self.score(params, batch, texts, 1), device=device)
        seqs = {k: v.to(device) for k, v in sequences(prompts, completions, tok.pad_token_id or 0).items()}
        head = value_head(model)
        packed = bool(batch.get(PACK_UPDATES))  # train.packing: the update forwards pack these rows
        with torch.no_grad():
            first = completion_outputs(model, seqs, packed=packed, values=True, entropy=True)
            old_logps, old_values, entropy, mask = first.logps, first.values, first.entropy, first.mask
            ref_logps = reference_logps_of(model, seqs, lambda m, b: token_logps(m, b, packed)[0])
            rewards, kl = token_rewards(scores, old_logps, ref_logps, mask, float(head.kl_coef))
            if params.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False)
            advantages, returns = gae(rewards, old_values, mask, params.gamma, params.lam)
            advantages = masked_whiten(advantages, mask)
        updating = time.perf_counter()
        sums: dict[str, float] = {}
        parts = min(params.num_minibatches, len(prompts))
        for _ in range(params.ppo_epochs):
            for idx in torch.randperm(len(prompts), device=device).tensor_split(parts):
                logps, values, _ = policy_outputs(model, {k: v[idx] for k, v in seqs.items()}, packed=packed)
                policy_loss, value_loss, figures = ppo_losses(
                    logps, values, old_logps[idx], old_values[idx], advantages[idx], returns[idx], mask[idx],
                    params.clip_range, params.clip_range_value)
                for name, value in {**figures, "policy_loss": policy_loss.item(),
                                    "value_loss": value_loss.item()}.items():
                    sums[name] = sums.get(name, 0.0) + value
                yield policy_loss + params.vf_coef * value_loss
        update_s = time.perf_counter() - updating
        sequence_kl = kl.sum(1)
        mean_kl = _mean_over_ranks(float(sequence_kl.mean()), device)
        head.kl_coef.fill_(adapt_kl(float(head.kl_coef), mean_kl, params.kl_target, params.kl_horizon,
                                    len(prompts)))
        tokens = sum(map(len, completions))
        n = max(mask.sum().item(), 1)
        real = int(seqs["attention_mask"].sum())  # prompt + completion tokens of one pass over the rollout
        self.record(model, {
            **{name: value / (params.ppo_epochs * parts) for name, value in sums.items()},
            "reward": float(scores.mean()), "reward_std": float(scores.std(unbiased=False)), "kl": mean_kl,
            "kl_coef": float(head.kl_coef), "entropy": float(entropy.sum() / n),
            "completion_length": tokens / len(completions), "rollout_s": rollout_s, "update_s": update_s,
            "update_tokens_per_s": real * params.ppo_epochs / max(update_s, 1e-9), "update_fill": real / first.slots,
            "rollout_tokens_per_s": tokens / max(rollout_s, 1e-9)})


def _mean_over_ranks(value: float, device: torch.device) -> float:
    """``value`` averaged over the workers (every rank adapts the KL coefficient alike)."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


TASK = register_task(PPO())
