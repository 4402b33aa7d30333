"""What the online RL tasks (``grpo``, ``ppo``) share: prompts in, the policy's own completions scored by reward
functions and/or a stored reward model, the result served as an ``sft`` model.

Rows hold a ``prompt`` (rendered as ``sft`` renders a user turn, through the model's :class:`PromptFormat`) and any
other columns, which reach the reward functions by name (TRL's convention). The reward functions are resolved and
called on the first row, and a reward model's store entry is checked (task, base fingerprint), when the data is
prepared: a missing, failing or wrongly shaped reward is a config error before training, not a crash in a worker.

Evaluation decodes one completion per held-out prompt (greedy by default, or sampled at ``eval_temperature`` with a
fixed seed per prompt) and reports its mean reward (``eval_reward``, the default metric), its log-ratio to the
reference (``eval_kl``: ``log pi - log pi_ref`` summed over the completion's tokens, where the model holds a
reference; with sampled completions an estimate of the KL) and its length. ``train_kl`` is the KL estimated on
the training rollouts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pandas as pd
import torch
from pydantic import Field

from rayft.config.schema import ExperimentConfig
from rayft.data.collate import pad_batch
from rayft.data.packing import PACK_UPDATES
from rayft.errors import ConfigError, FieldError
from rayft.generate.params import SamplingParams
from rayft.rl.rewards import RewardModelSpec, RewardSpec, Rewards, check_reward_model, load_rewards
from rayft.tasks.base import Task, TaskParams, task_params
from rayft.tasks.dpo import REFERENCE_ATTR, reference_logps_of
from rayft.tasks.prompt_format import PromptFormat
from rayft.tasks.sft import causal_lm

PARAMS_ATTR = "_rayft_rl_params"  # the run's task parameters, for evaluation
FIGURES_ATTR = "_rayft_rl_figures"  # what the last training batch measured, for the loop's train_* report


class OnlineRLParams(TaskParams):
    rewards: list[RewardSpec] = Field(default_factory=list, description="reward functions (module:function), "
                                                                        "weighted")
    reward_model: RewardModelSpec | None = Field(None, description="a stored reward_model whose score is a reward")
    max_new_tokens: int = Field(32, ge=1, le=4096)
    temperature: float = Field(1.0, gt=0, le=2.0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    eval_temperature: float = Field(0.0, ge=0, le=2.0, description="temperature of the held-out completions: 0 "
                                                                    "decodes greedily (as TRL's evaluations do)")
    eval_seed: int = Field(0, description="seed of sampled held-out completions (prompt i uses eval_seed + i)")


@lru_cache(maxsize=8)
def tokenizer_of(path: str) -> Any:
    from rayft.models import load_tokenizer

    return load_tokenizer(path)


@lru_cache(maxsize=8)
def _rewards(specs: tuple[RewardSpec, ...], reward_model: RewardModelSpec | None) -> Rewards:
    return load_rewards(list(specs), reward_model=reward_model)


class OnlineRL(Task):
    """Base of the tasks that learn from rewards of the policy's own completions; subclasses add the update."""

    peft_task_type = "CAUSAL_LM"
    metrics = ("reward", "kl", "completion_length")
    default_metric = "eval_reward"
    default_mode = "max"
    roles = {"prompt": "prompt_column"}
    default_columns = {"prompt": "prompt"}
    params = OnlineRLParams
    serves_as = "sft"  # an RL-tuned model completes text like an SFT one

    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        """Prompt ids plus each row's prompt text and other columns (for the reward functions), after checking
        the rewards on the first row."""
        params = task_params(self, cfg)
        fmt = PromptFormat.of_training(tokenizer, cfg)
        prompt_col = columns["prompt"]
        others = [c for c in df.columns if c != prompt_col]
        rows = df.to_dict("records")
        if not params.rewards and params.reward_model is None:
            raise ConfigError([FieldError("task.rewards", [], "reward functions ([{function: module:function}]) "
                                          "or a stored reward model (task.reward_model: {id: ...}), or both")])
        if params.reward_model is not None:
            check_reward_model(params.reward_model)
        if rows:
            first = rows[0]
            load_rewards(params.rewards, (str(first[prompt_col]), "", {c: first[c] for c in others}))
        out: dict[str, list[Any]] = {"input_ids": [], "prompt": [], "columns": []}
        limit = cfg.model.max_length
        for row in rows:
            ids = fmt.render_chat(tokenizer, [{"role": "user", "content": str(row[prompt_col])}])
            if len(ids) >= limit:
                continue  # no room left for a completion
            out["input_ids"].append(ids)
            out["prompt"].append(str(row[prompt_col]))
            out["columns"].append({c: row[c] for c in others})
        return out

    def pack(self, columns: dict[str, list[Any]], max_length: int) -> dict[str, list[Any]]:
        """The prompts as they are: under ``train.packing`` what is packed is the prompt + completion rows of each
        rollout, in the update forwards (:func:`rayft.rl.rollouts.completion_outputs`), as the batch's flag says."""
        return columns

    def collate_packed(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
        return {**self.collate(features, pad_id), PACK_UPDATES: True}

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
        batch: dict[str, Any] = pad_batch([{k: f[k] for k in ("input_ids", "index") if k in f} for f in features],
                                          pad_id)
        batch["prompt"] = [f["prompt"] for f in features]
        batch["columns"] = [f["columns"] for f in features]
        return batch

    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        return causal_lm(path)

    def prepare_model(self, model: torch.nn.Module, params: OnlineRLParams) -> torch.nn.Module:
        model.__dict__[PARAMS_ATTR] = params  # evaluation samples with the run's settings
        return model

    def step_figures(self, model: Any) -> dict[str, float]:
        return getattr(model, "module", model).__dict__.pop(FIGURES_ATTR, {})

    def record(self, model: Any, figures: dict[str, float]) -> None:
        """Keep what this training batch measured for :meth:`step_figures`."""
        getattr(model, "module", model).__dict__[FIGURES_ATTR] = figures

    def eval_sampling(self, params: OnlineRLParams, index: int) -> SamplingParams:
        """How held-out prompt ``index`` is completed: greedily, or sampled at ``eval_temperature`` with a seed of its
        own (the same completions wherever the row lands, for the same policy)."""
        return SamplingParams(max_tokens=params.max_new_tokens, temperature=params.eval_temperature,
                              top_p=params.top_p, seed=params.eval_seed + index)

    def eval_batch(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        from rayft.rl.rollouts import rollout, sequences, token_logps

        inner = getattr(model, "module", model)
        params = inner.__dict__[PARAMS_ATTR]
        tok = tokenizer_of(inner.config._name_or_path)
        prompts, index = prompt_rows(batch), batch["index"].tolist()
        sampling = [self.eval_sampling(params, i) for i in index]  # a prompt is completed alike wherever it lands
        completions = [group[0] for group in rollout(model, tok, prompts, sampling)]
        texts = [tok.decode(c, skip_special_tokens=True) for c in completions]
        out = {"index": index, "reward": self.score(params, batch, texts, 1),
               "length": [len(c) for c in completions]}
        if has_reference(model):  # every rank runs the same forwards (ZeRO-3 gathers weights in them)
            seqs = sequences(prompts, completions, tok.pad_token_id or 0)
            seqs = {k: v.to(batch["input_ids"].device) for k, v in seqs.items()}
            logps, _ = token_logps(model, seqs)
            ref = reference_logps_of(model, seqs, lambda m, b: token_logps(m, b)[0])
            out["kl"] = (logps - ref).sum(1).tolist()
        return out

    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        seen = {i: (r, n) for p in parts for i, r, n in zip(p["index"], p["reward"], p["length"])}
        count = max(len(seen), 1)
        out = {"reward": sum(v[0] for v in seen.values()) / count,
               "completion_length": sum(v[1] for v in seen.values()) / count}
        kls = {i: k for p in parts if "kl" in p for i, k in zip(p["index"], p["kl"])}
        if kls:
            out["kl"] = sum(kls.values()) / len(kls)
        return out

    def score(self, params: OnlineRLParams, batch: dict[str, Any], texts: list[str], g: int) -> list[float]:
        """The weighted reward of every completion (``g`` per prompt, in prompt order)."""
        prompts = [p for p in batch["prompt"] for _ in range(g)]
        rows = [c for c in batch["columns"] for _ in range(g)]
        columns = {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}
        try:
            return _rewards(tuple(params.rewards), params.reward_model).score(prompts, texts, columns)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code failing mid-training: say which and why
            raise ConfigError([FieldError("task.rewards", [r.function for r in params.rewards],
                                          f"reward functions that score every completion ({type(exc).__name__}: "
                                          f"{exc})")]) from None


def prompt_rows(batch: dict[str, Any]) -> list[list[int]]:
    """Each row's prompt ids without the padding the collator added."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu())]


def has_reference(model: Any) -> bool:
    """True when the model can give a reference's log-probabilities: a frozen copy, or adapters to switch off."""
    inner = getattr(model, "module", model)
    return REFERENCE_ATTR in inner.__dict__ or hasattr(inner, "disable_adapter")
