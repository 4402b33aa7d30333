"""One shared encoder with a head per task (``tasks:``, :mod:`rayft.tasks.multitask`).

transformers has no model class with several heads, so this module adds a small one: the base model without a head
(``AutoModel``) and one head per task, each a dropout and a linear layer named ``classifier`` as transformers' own
heads are (peft's sequence-classification wrapper then trains and saves every head as it does a single head):

- ``sequence_classification``: the pooled output where the base has a pooler (BERT), else the last real token's
  hidden state (decoders, as ``*ForSequenceClassification`` does); cross-entropy.
- ``token_classification``: a label per token; cross-entropy without the ignored positions.
- ``extractive_qa``: start and end logits; the mean of their cross-entropies (as ``*ForQuestionAnswering``).

Every batch comes from one task: its ``task`` tensor (the head's index, one per row) picks the head. The model
returns transformers' output classes, so each task's own evaluation code reads them unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import (QuestionAnsweringModelOutput, SequenceClassifierOutput,
                                           TokenClassifierOutput)

from rayft.data.collate import IGNORE_INDEX

HEAD_WEIGHTS = "multitask_heads.safetensors"


@dataclass(frozen=True)
class HeadSpec:
    """One head: its name, its task and its labels in id order (none for extractive QA)."""

    name: str
    task: str
    labels: tuple[str, ...]

    @property
    def outputs(self) -> int:
        return 2 if self.task == "extractive_qa" else len(self.labels)


class Head(torch.nn.Module):
    def __init__(self, hidden: int, outputs: int, dropout: float, init_range: float) -> None:
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(hidden, outputs)
        torch.nn.init.normal_(self.classifier.weight, std=init_range)
        torch.nn.init.zeros_(self.classifier.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))


class MultiTaskModel(torch.nn.Module):
    """``encoder`` (a transformers base model) plus ``heads`` (one :class:`Head` per :class:`HeadSpec`)."""

    base_model_prefix = "encoder"  # what rayft.methods.layers counts as backbone; the rest are heads

    def __init__(self, encoder: torch.nn.Module, specs: list[HeadSpec]) -> None:
        super().__init__()
        self.encoder, self.specs = encoder, list(specs)
        cfg = encoder.config
        hidden = cfg.hidden_size
        dropout = next((v for v in (getattr(cfg, "classifier_dropout", None), getattr(cfg, "hidden_dropout_prob", None))
                        if v is not None), 0.1)
        init = getattr(cfg, "initializer_range", 0.02)
        self.heads = torch.nn.ModuleDict({s.name: Head(hidden, s.outputs, dropout, init) for s in specs})

    # what peft and transformers' helpers look for on a model
    @property
    def config(self) -> Any:
        return self.encoder.config

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.encoder.get_input_embeddings()

    def enable_input_require_grads(self) -> None:
        self.encoder.enable_input_require_grads()

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.encoder.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                task: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None,
                return_dict: bool | None = None, **inputs: Any) -> Any:
        if task is None:
            raise ValueError(f"a multi-task model needs the batch's 'task' (a head index of 0-{len(self.specs) - 1})")
        spec = self.specs[int(task.reshape(-1)[0])]
        inputs = {k: v for k, v in inputs.items() if k in ("token_type_ids", "position_ids", "inputs_embeds")}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs)
        head = self.heads[spec.name]
        if spec.task == "sequence_classification":
            logits = head(_pooled(out, attention_mask))
            loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits)
        logits = head(out.last_hidden_state)
        if spec.task == "token_classification":
            loss = None if labels is None else F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX)
            return TokenClassifierOutput(loss=loss, logits=logits)
        start, end = (x.squeeze(-1).contiguous() for x in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start.size(1)  # positions outside the window are clamped there and ignored, as transformers does
            loss = (F.cross_entropy(start.float(), start_positions.clamp(0, ignored), ignore_index=ignored)
                    + F.cross_entropy(end.float(), end_positions.clamp(0, ignored), ignore_index=ignored)) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end)

    def save_pretrained(self, out_dir: str, **kwargs: Any) -> None:
        """A full-weight result: the encoder as a transformers folder, the heads beside it (their names, tasks and
        labels are the run's config and labels, recorded in its manifest)."""
        from safetensors.torch import save_file

        self.encoder.save_pretrained(out_dir, **kwargs)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()},
                  os.path.join(out_dir, HEAD_WEIGHTS), metadata={"format": "pt"})


def _pooled(out: Any, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The sequence's summary: the pooler's output, else the hidden state of the last real token."""
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled
    hidden = out.last_hidden_state
    if attention_mask is None:
        return hidden[:, -1]
    last = attention_mask.size(1) - 1 - attention_mask.flip(-1).argmax(-1)  # right or left padding alike
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def build(path: str, specs: list[HeadSpec]) -> MultiTaskModel:
    """The base at ``path`` with fresh heads; a full-weight result's folder also brings its trained heads."""
    from transformers import AutoModel

    model = MultiTaskModel(AutoModel.from_pretrained(path, dtype=torch.float32), specs)
    weights = os.path.join(path, HEAD_WEIGHTS)
    if os.path.isfile(weights):
        from safetensors.torch import load_file

        model.heads.load_state_dict(load_file(weights))
    return model


class HeadView(torch.nn.Module):
    """One head of a multi-task model, called as a single-task model is: every call runs that head, and ``config``
    carries its labels (what the tasks' evaluation and the server read)."""

    def __init__(self, model: torch.nn.Module, index: int, spec: HeadSpec) -> None:
        super().__init__()
        self.multitask, self.index, self.spec = model, index, spec
        base = model.module if hasattr(model, "module") else model  # a DeepSpeed engine: its module
        config = base.config.__class__.from_dict(base.config.to_dict())
        config.id2label = dict(enumerate(spec.labels))
        config.label2id = {n: i for i, n in enumerate(spec.labels)}
        self.head_config = config

    @property
    def config(self) -> Any:
        return self.head_config

    def forward(self, input_ids: torch.Tensor, **inputs: Any) -> Any:
        task = torch.full((input_ids.size(0),), self.index, dtype=torch.long, device=input_ids.device)
        return self.multitask(input_ids=input_ids, task=task, **{k: v for k, v in inputs.items() if k != "task"})
