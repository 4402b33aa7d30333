"""Group relative policy optimisation (GRPO) on a causal LM against reward functions and/or a reward model.

Each training step samples ``group_size`` completions of every prompt of the batch on the decode engine (inside
the worker, not over HTTP), scores them with the weighted rewards of ``task.rewards`` / ``task.reward_model`` and
takes one policy step on GRPO's clipped surrogate (:mod:`rayft.rl.grpo`) with a KL penalty to the reference (the
base with its adapters disabled, or a frozen copy for full-weight methods, as DPO holds it). Prompts, reward checks
and evaluation (one greedy completion per held-out prompt) are :class:`rayft.tasks.online_rl.OnlineRL`'s.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from pydantic import Field

from rayft.data.packing import PACK_UPDATES
from rayft.generate.params import SamplingParams
from rayft.tasks.base import register_task
from rayft.tasks.dpo import hold_reference, reference_logps_of
from rayft.tasks.online_rl import OnlineRL, OnlineRLParams, prompt_rows, tokenizer_of


class GRPOParams(OnlineRLParams):
    group_size: int = Field(4, ge=2, le=64, description="completions sampled per prompt (G)")
    beta: float = Field(0.04, ge=0, description="weight of the KL penalty to the reference")
    epsilon: float = Field(0.2, gt=0, lt=1, description="clip range of the policy ratio")


class GRPO(OnlineRL):
    name = "grpo"
    params = GRPOParams

    def prepare_model(self, model: torch.nn.Module, params: GRPOParams) -> torch.nn.Module:
        """A frozen reference when the model cannot switch its adapters off (and the KL penalty is on)."""
        if params.beta > 0:
            hold_reference(model)
        return super().prepare_model(model, params)

    def compute_loss(self, model: Any, batch: dict[str, Any], params: GRPOParams) -> torch.Tensor:
        from rayft.rl.grpo import group_advantages, grpo_loss
        from rayft.rl.rollouts import completion_outputs, rollout, sequences, token_logps

        inner = getattr(model, "module", model)
        tok = tokenizer_of(inner.config._name_or_path)
        prompts = prompt_rows(batch)
        g = params.group_size
        sampling = SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                  top_p=params.top_p, n=g)
        started = time.perf_counter()
        groups = rollout(model, tok, prompts, sampling)
        rollout_s = time.perf_counter() - started
        completions = [c for group in groups for c in group]
        texts = [tok.decode(c, skip_special_tokens=True) for c in completions]
        rewards = self.score(params, batch, texts, g)
        advantages = group_advantages(torch.tensor(rewards).view(len(prompts), g)).flatten()
        seqs = sequences([p for p in prompts for _ in range(g)], completions, tok.pad_token_id or 0)
        seqs = {k: v.to(batch["input_ids"].device) for k, v in seqs.items()}
        packed = bool(batch.get(PACK_UPDATES))  # train.packing: the update forwards pack these rows
        out = completion_outputs(model, seqs, packed=packed)
        logps, mask = out.logps, out.mask
        ref = reference_logps_of(model, seqs, lambda m, b: token_logps(m, b, packed)[0]) if params.beta > 0 else None
        loss, figures = grpo_loss(logps, logps.detach(), ref, advantages.to(logps.device), mask, params.epsilon,
                                  params.beta)
        scores = torch.tensor(rewards)
        tokens = sum(map(len, completions))
        self.record(model, {**figures, "reward": float(scores.mean()), "reward_std": float(scores.std(unbiased=False)),
                            "completion_length": tokens / len(completions), "rollout_s": rollout_s,
                            "update_fill": int(seqs["attention_mask"].sum()) / max(out.slots, 1),
                            "rollout_tokens_per_s": tokens / max(rollout_s, 1e-9)})
        return loss


TASK = register_task(GRPO())
