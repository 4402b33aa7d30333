"""Direct preference optimization (DPO) on a causal LM.

Rows hold a ``prompt``, a ``chosen`` and a ``rejected`` response, rendered as in ``sft`` (through one
:class:`rayft.tasks.prompt_format.PromptFormat`, which export records for serving). The loss compares how much
more the policy prefers the chosen response than a frozen reference does:
``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` over summed response log-probs
(with optional label smoothing, the conservative DPO variant). The reference is the base model: for
adapter methods (peft) it is the same network with its adapters disabled, so no second copy is held;
for full-weight methods it is a frozen copy taken before training. Metrics: loss, reward accuracy,
reward margin, and the mean chosen/rejected rewards.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field

from rayft.config.schema import ExperimentConfig
from rayft.data.collate import IGNORE_INDEX, REJECTED, pad_pairs
from rayft.data.packing import SEGMENTS, pack_split, segment_sums
from rayft.tasks.base import Task, TaskParams, register_task
from rayft.tasks.prompt_format import PromptFormat
from rayft.tasks.sft import causal_lm, token_logits

REFERENCE_ATTR = "_rayft_reference"  # kept outside nn.Module registration: never trained, saved or sharded
PARAMS_ATTR = "_rayft_dpo_params"


class DPOParams(TaskParams):
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="assumed rate of flipped preference labels")


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probabilities of each sequence's labelled (response) tokens: one per row of a padded batch, one
    per sequence of a packed one (chosen sequences first, then rejected ones, as padded)."""
    logits, labels = token_logits(model, batch)[:, :-1], batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    if SEGMENTS in batch:
        return segment_sums(token_logps, batch[SEGMENTS][:, 1:], 2 * len(batch["index"]))
    return token_logps.sum(-1)


@torch.no_grad()
def reference_logps_of(model: Any, batch: dict[str, torch.Tensor], logps: Callable[[Any, dict], Any]) -> Any:
    """``logps(reference, batch)`` on the frozen reference: the adapter-free base, or the copy held by
    :meth:`DPO.prepare_model` (and GRPO's) for full-weight methods."""
    inner = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    reference = inner.__dict__.get(REFERENCE_ATTR)
    if reference is not None:
        device = batch["input_ids"].device
        if next(reference.parameters()).device != device:
            reference.to(device)
        return logps(reference, batch)
    with inner.disable_adapter():
        return logps(inner, batch)


def hold_reference(model: torch.nn.Module) -> None:
    """Keep a frozen copy of ``model`` as its reference, unless it can switch its adapters off (peft)."""
    if not hasattr(model, "disable_adapter"):
        model.__dict__[REFERENCE_ATTR] = copy.deepcopy(model).eval().requires_grad_(False)


def reference_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The frozen reference's summed response log-probs."""
    return reference_logps_of(model, batch, sequence_logps)


def preference_terms(model: Any, batch: dict[str, torch.Tensor], beta: float) -> tuple[torch.Tensor, ...]:
    """(chosen rewards, rejected rewards, margins as logits) for the pairs of a stacked batch."""
    n = len(batch["index"])
    policy = sequence_logps(model, batch)
    reference = reference_logps(model, batch)
    rewards = beta * (policy - reference)
    chosen, rejected = rewards[:n], rewards[n:]
    return chosen, rejected, chosen - rejected


def dpo_loss(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Per-pair DPO loss from the reward margins (conservative DPO when ``label_smoothing`` > 0)."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


class DPO(Task):
    name = "dpo"
    peft_task_type = "CAUSAL_LM"
    metrics = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")
    default_metric = "eval_loss"
    default_mode = "min"
    stratify = False
    roles = {"prompt": "prompt_column", "chosen": "chosen_column", "rejected": "rejected_column"}
    default_columns = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    params = DPOParams
    serves_as = "sft"  # the result is a causal LM: served by the completion and chat routes

    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        limit, fmt = cfg.model.max_length, PromptFormat.of_training(tokenizer, cfg, columns)
        out: dict[str, list[Any]] = {k: [] for k in ("input_ids", "labels", REJECTED + "input_ids",
                                                     REJECTED + "labels")}
        rows = zip(*(df[columns[r]].astype(str) for r in ("prompt", "chosen", "rejected")))
        for prompt, chosen, rejected in rows:
            pair = []
            for response in (chosen, rejected):
                ids, n_prompt = fmt.render_example(tokenizer, prompt, response)
                ids = ids[:limit]
                pair.append((ids, [IGNORE_INDEX] * min(n_prompt, len(ids)) + ids[n_prompt:]))
            if any(all(x == IGNORE_INDEX for x in lab) for _, lab in pair):
                continue  # the prompt alone fills max_length: no response tokens to compare
            for prefix, (ids, lab) in zip(("", REJECTED), pair):
                out[prefix + "input_ids"].append(ids)
                out[prefix + "labels"].append(lab)
        return out

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        return pad_pairs(features, pad_id)

    def pack(self, columns: dict[str, list[Any]], max_length: int) -> dict[str, list[Any]]:
        return pack_split(columns, max_length, pairs=True)

    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        return causal_lm(path)

    def prepare_model(self, model: torch.nn.Module, params: DPOParams) -> torch.nn.Module:
        """Hold a frozen reference copy unless the model can switch its adapters off."""
        hold_reference(model)
        model.__dict__[PARAMS_ATTR] = params  # evaluation sees the run's beta too
        return model

    def compute_loss(self, model: Any, batch: dict[str, torch.Tensor], params: DPOParams) -> torch.Tensor:
        _, _, logits = preference_terms(model, batch, params.beta)
        return dpo_loss(logits, params.label_smoothing).mean()

    def eval_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        params = getattr(model, "module", model).__dict__.get(PARAMS_ATTR) or DPOParams()
        chosen, rejected, logits = preference_terms(model, batch, params.beta)
        return {"index": batch["index"].tolist(), "loss": dpo_loss(logits, params.label_smoothing).tolist(),
                "chosen": chosen.tolist(), "rejected": rejected.tolist()}

    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        seen = {i: (loss, c, r) for p in parts for i, loss, c, r in zip(p["index"], p["loss"], p["chosen"],
                                                                         p["rejected"])}
        n = max(len(seen), 1)
        return {"loss": sum(v[0] for v in seen.values()) / n,
                "reward_accuracy": sum(v[1] > v[2] for v in seen.values()) / n,
                "reward_margin": sum(v[1] - v[2] for v in seen.values()) / n,
                "chosen_reward": sum(v[1] for v in seen.values()) / n,
                "rejected_reward": sum(v[2] for v in seen.values()) / n}


TASK = register_task(DPO())
