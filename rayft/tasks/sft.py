"""Causal-LM instruction tuning (SFT), rendered with the tokenizer's chat template; only the response
(assistant) tokens count in the loss. Metrics: eval loss and perplexity.

Three data layouts (``task.format``, detected from the columns when ``auto``):

- ``prompt_response``: a ``prompt`` and a ``response`` column;
- ``alpaca``: ``instruction``, optional ``input``, ``output`` (the prompt is the instruction, then the input);
- ``chat``: a ``messages`` column of ``[{"role": ..., "content": ...}, ...]``; every assistant turn is learned.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from rayft.config.schema import ExperimentConfig
from rayft.data.collate import IGNORE_INDEX
from rayft.data.packing import SEGMENTS, pack_split
from rayft.tasks.base import Task, register_task, task_params
from rayft.tasks.prompt_format import FALLBACK_TEMPLATE, PromptFormat, _ids  # noqa: F401  (serve.infer's names)
from rayft.tasks.sft_formats import SFTParams, alpaca_prompt, detect_layout, layout_roles, learned_labels


MODEL_KEYS = ("input_ids", "attention_mask", "position_ids", "labels")


def render_prompt(tokenizer: Any, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of a user prompt followed by the assistant turn opener (one-off: tasks build a
    :class:`PromptFormat` once per tokenization)."""
    return PromptFormat.of_tokenizer(tokenizer, system).render_chat(tokenizer, [{"role": "user", "content": prompt}])


def render_example(tokenizer: Any, prompt: str, response: str, system: str | None = None) -> tuple[list[int], int]:
    """Token ids of a whole exchange and the length of its prompt part (masked out of the loss)."""
    return PromptFormat.of_tokenizer(tokenizer, system).render_example(tokenizer, prompt, response)


def causal_lm(path: str) -> torch.nn.Module:
    """The causal LM every generating task trains (``sft``, ``dpo``, ``grpo``), in float32."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def token_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal LM's logits at the batch's own token positions (float32).

    Prompt-learning adapters (``prompt``, ``ptuning``) prepend virtual tokens whose outputs come first: they are
    dropped, so position ``i`` of the result always predicts token ``i + 1`` of ``input_ids``.
    """
    logits = model(**model_inputs(batch, ("input_ids", "attention_mask", "position_ids"))).logits
    return logits[:, -batch["input_ids"].size(1):].float()


def model_inputs(batch: dict[str, torch.Tensor], keys: tuple[str, ...] = MODEL_KEYS) -> dict[str, torch.Tensor]:
    """The batch's entries the model takes: a packed batch has ``position_ids`` and no attention mask (so that
    transformers masks attention by example, see :mod:`rayft.data.packing`), a padded one an attention mask."""
    inputs = {k: batch[k] for k in keys if k in batch}
    if SEGMENTS in batch:
        inputs["use_cache"] = False  # with a cache transformers does not look for packed sequences in the positions
    return inputs


class InstructionTuning(Task):
    name = "sft"
    peft_task_type = "CAUSAL_LM"
    metrics = ("loss", "perplexity")
    default_metric = "eval_loss"
    default_mode = "min"
    stratify = False
    roles = {"prompt": "prompt_column", "response": "response_column"}
    default_columns = {"prompt": "prompt", "response": "response"}
    params = SFTParams

    def roles_for(self, data: dict[str, Any], task: dict[str, Any], present: list[str]) -> tuple[dict, dict, dict]:
        """The column roles of the layout in use (``task.format``, or detected from the columns)."""
        return layout_roles(detect_layout(task.get("format", "auto"), data, present), data, present)

    def rows(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str]):
        """(token ids, labels) per row for whichever layout ``columns`` describes."""
        fmt = PromptFormat.of_training(tokenizer, cfg, columns)  # what export records for serving
        if "messages" in columns:
            for messages in df[columns["messages"]]:
                ids, spans = fmt.render_transcript(tokenizer, list(messages))
                yield ids, learned_labels(ids, spans)
            return
        if "instruction" in columns:
            inputs = df[columns["input"]] if "input" in columns else [None] * len(df)
            prompts = [alpaca_prompt(i, x) for i, x in zip(df[columns["instruction"]], inputs)]
            responses = df[columns["output"]].astype(str)
        else:
            prompts, responses = df[columns["prompt"]].astype(str), df[columns["response"]].astype(str)
        for prompt, response in zip(prompts, responses):
            ids, n_prompt = fmt.render_example(tokenizer, prompt, response)
            yield ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:]

    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        task_params(self, cfg)  # rejects unknown task keys early
        out: dict[str, list[Any]] = {"input_ids": [], "labels": []}
        limit = cfg.model.max_length
        for ids, labels_row in self.rows(df, tokenizer, cfg, columns):
            ids, labels_row = ids[:limit], labels_row[:limit]
            if all(x == IGNORE_INDEX for x in labels_row):
                continue  # the prompt alone fills max_length: nothing to learn from this row
            out["input_ids"].append(ids)
            out["labels"].append(labels_row)
        return out

    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        return causal_lm(path)

    def pack(self, columns: dict[str, list[Any]], max_length: int) -> dict[str, list[Any]]:
        return pack_split(columns, max_length)

    def compute_loss(self, model: Any, batch: dict[str, torch.Tensor], params: Any) -> torch.Tensor:
        """The model's own loss (mean over the learned tokens), on padded or packed batches."""
        return model(**model_inputs(batch)).loss

    def eval_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        logits = token_logits(model, batch)
        shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
        loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="none").view(shift_labels.shape)
        tokens = (shift_labels != IGNORE_INDEX).sum(-1)
        return {"index": batch["index"].tolist(), "loss_sum": loss.sum(-1).tolist(), "tokens": tokens.tolist()}

    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        seen: dict[int, tuple[float, int]] = {}
        for p in parts:
            for i, ls, nt in zip(p["index"], p["loss_sum"], p["tokens"]):
                seen[i] = (ls, nt)
        total = sum(v[0] for v in seen.values())
        count = max(sum(v[1] for v in seen.values()), 1)
        loss = total / count
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def generate(model: torch.nn.Module, tokenizer: Any, prompt_ids: list[int], max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
             extra: dict[str, Any] | None = None) -> tuple[list[int], str]:
    """Generate a continuation; returns (new token ids, finish reason).

    ``extra`` goes to ``model.generate`` as is (e.g. a ``streamer`` and ``stopping_criteria``).
    """
    if seed is not None:
        torch.manual_seed(seed)
    ids = torch.tensor([prompt_ids])
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id
                              if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False)
    kwargs.update(extra or {})
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    new = out[0, len(prompt_ids):].tolist()
    finish = "stop" if tokenizer.eos_token_id in new else "length"
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return new, finish


TASK = register_task(InstructionTuning())
