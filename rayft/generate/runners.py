"""How a group of sequences runs one forward pass, and where each adapter's sequences run.

peft keeps one tuner type per ``PeftModel`` (it refuses to add a prefix adapter to a LoRA model), so an engine is
given its main model plus, optionally, prompt-learning ``PeftModel``s built on the same base. Groups (one forward
each per step):

- ``shared``: the main model's bare forward. Rows of plain-LoRA adapters select their adapter per row, gathered into
  two batched matmuls per layer (:mod:`rayft.generate.gathered`), or through peft's mixed-batch ``adapter_names``
  (``__base__`` for the others) where that cannot run, so every LoRA adapter, the bare base and every
  prompt-learning adapter batch together. Prompt learning needs no adapter in the forward: prefix tuning is
  key/values at the start of the cache and prompt/p-tuning is virtual tokens run as the first prefill chunk
  (:func:`begin`); peft's own ``forward`` would re-inject them on every call and ignore a given cache.
- ``solo``: an adapter peft cannot mix (DoRA: peft refuses ``adapter_names`` with it; IA3, AdaLoRA and the other
  tuners have no per-row path): its own group, run with that adapter active.

Under a tuner that cannot mix (an IA3 ``PeftModel``, say), the shared group runs inside peft's ``disable_adapter()``.
Real tokens of a prompt-learning sequence sit at positions after its virtual ones, as in peft's ``generate``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from transformers import DynamicCache

from rayft.generate.cache import BatchCache
from rayft.generate.device import device_of
from rayft.generate.gathered import GatheredLora

BASE_ROW = "__base__"  # peft's name for a row that uses no adapter in a mixed batch
SHARED = ("shared", None)


class Runner:
    """Forward passes of one group over a :class:`BatchCache`; the logits of each row's last position come back."""

    def __init__(self, model: Any, adapter: str | None = None) -> None:
        self.model, self.adapter = model, adapter
        self.tuner = model.base_model if is_peft(model) else None
        self.device = device_of(model)
        self.gathered = GatheredLora(model) if self.tuner is not None and mixes(self.tuner) else None

    def forward(self, ids: torch.Tensor | None, positions: torch.Tensor, cache: BatchCache,
                adapters: list[str | None], embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Runs ``ids`` (or ``embeds``) at ``positions`` after the cached ones; every row gains those positions."""
        mask = cache.step_mask(positions.shape[1])
        with self.context(adapters) as (target, extra):
            out = target(input_ids=ids, inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                         past_key_values=cache.cache, use_cache=True, logits_to_keep=1, **extra)
        return out.logits[:, -1]

    @contextmanager
    def context(self, adapters: list[str | None]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """The module to call and its extra arguments, for rows using ``adapters``."""
        if self.tuner is None:
            yield self.model, {}
        elif mixes(self.tuner):
            own = [a if a in self.tuner.peft_config else None for a in adapters]
            if self.gathered.supports({a for a in own if a is not None}):
                with self.gathered.rows(own):
                    yield self.model, {}
            else:
                yield self.model, {"adapter_names": [a or BASE_ROW for a in own]}  # whichever adapter is active
        elif self.model.active_peft_config.is_prompt_learning:
            yield self.model.get_base_model(), {}  # the PeftModel's own tuner is the prompt encoder: not in forward
        else:
            with self.model.disable_adapter():
                yield self.model, {}


    def adapters_changed(self) -> None:
        """Adapters were loaded, refilled or deleted: gathered weights must be gathered again."""
        if self.gathered is not None:
            self.gathered.invalidate()


class SoloRunner(Runner):
    """One adapter peft cannot mix, run with that adapter active."""

    @contextmanager
    def context(self, adapters: list[str | None]) -> Iterator[tuple[Any, dict[str, Any]]]:
        if self.model.active_adapter != self.adapter:
            self.model.set_adapter(self.adapter)  # walks every module: the group keeps it active while it can
        yield self.model, {}


def policy_adapter(model: Any) -> str | None:
    """The adapter to ask the engine for to run ``model`` as it is: a ``PeftModel``'s active adapter, else None."""
    return model.active_adapter if is_peft(model) else None


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def mixes(tuner: Any) -> bool:
    from peft.tuners.lora import LoraModel

    return isinstance(tuner, LoraModel)


def group_key(model: Any, adapter: str | None) -> tuple[str, str | None]:
    """The group of a sequence for ``adapter`` of the main ``model`` (None, or a prompt-learning adapter: shared)."""
    if adapter is None or not is_peft(model):
        return SHARED
    config = model.peft_config[adapter]
    if config.is_prompt_learning:
        return SHARED
    if mixes(model.base_model) and config.peft_type == "LORA" and not getattr(config, "use_dora", False):
        return SHARED
    return ("solo", adapter)


def make_runner(model: Any, key: tuple[str, str | None]) -> Runner:
    return Runner(model) if key == SHARED else SoloRunner(model, key[1])


def virtual_tokens(source: Any, adapter: str | None) -> int:
    """How many virtual positions ``adapter`` of ``source`` puts before the prompt (0 unless prompt learning)."""
    if adapter is None or not is_peft(source):
        return 0
    config = source.peft_config[adapter]
    return config.num_virtual_tokens if config.is_prompt_learning else 0


def begin(source: Any, adapter: str | None, runner: Runner) -> BatchCache:
    """The cache a new sequence starts from: empty, or holding ``adapter``'s virtual prompt (from ``source``).

    Prefix tuning's key/values are the cache; prompt/p-tuning's virtual token embeddings are run through
    ``runner`` (the shared group's bare forward) at positions ``0..V-1``.
    """
    empty = BatchCache(DynamicCache(), torch.zeros(1, 0, dtype=torch.long, device=runner.device))
    width = virtual_tokens(source, adapter)
    if width == 0:
        return empty
    with _active(source, adapter):
        prompt = source.get_prompt(batch_size=1)
    if source.peft_config[adapter].peft_type == "PREFIX_TUNING":
        cache = prompt if isinstance(prompt, DynamicCache) else DynamicCache(ddp_cache_data=list(prompt))
        dtype = runner.model.get_input_embeddings().weight.dtype  # the prefix encoder may keep float32 weights
        cache = DynamicCache(ddp_cache_data=[(layer.keys.to(runner.device, dtype), layer.values.to(runner.device, dtype))
                                             for layer in cache.layers])
        return BatchCache(cache, torch.ones(1, width, dtype=torch.long, device=runner.device))
    embeds = prompt.to(device=runner.device, dtype=runner.model.get_input_embeddings().weight.dtype)
    runner.forward(None, torch.arange(width, device=runner.device)[None], empty, [None], embeds=embeds)
    return empty


@contextmanager
def _active(model: Any, adapter: str) -> Iterator[None]:
    """``adapter`` active for the duration (``get_prompt`` reads the active adapter)."""
    before = model.active_adapter
    if before != adapter:
        model.set_adapter(adapter)
    try:
        yield
    finally:
        if model.active_adapter != before:
            model.set_adapter(before)
