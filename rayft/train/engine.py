"""Building blocks of the worker loop: model, data loaders, DeepSpeed engine, evaluation, saving."""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from rayft.config.schema import ExperimentConfig
from rayft.data.collate import Columnar
from rayft.data.prepare import PreparedData
from rayft.data.streaming import StreamedSplit
from rayft.train.ds_config import deepspeed_config
from rayft.train.recipe import Recipe
from rayft.train.shards import ShardLoader

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def build_model(recipe: Recipe, data: PreparedData) -> torch.nn.Module:
    """Base model with the task's head, adapted by the configured method, then the task's last touch on it
    (e.g. DPO's frozen reference)."""
    task = recipe.task
    model = task.build_model(data.model_path, recipe.cfg, data.labels)
    # from_pretrained hands the base back in eval mode: train from the first step (dropout on).
    model = recipe.method.apply(model, recipe.method_params, task.peft_task_type_for(recipe.cfg)).train()
    if recipe.cfg.train.gradient_checkpointing:
        checkpoint_activations(model)
    return task.prepare_model(model, recipe.task_params)


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Recompute each block's activations in the backward instead of keeping them (``train.gradient_checkpointing``).

    transformers' non-reentrant checkpointing works under every ZeRO stage; with frozen embeddings (peft methods)
    the inputs are made to require grad as well, as peft's own ``prepare_model_for_kbit_training`` does, so the
    checkpointed blocks always have a gradient to carry back.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name is deprecated
        base.activation_checkpointing_enable({"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(base.config, "use_cache"):
        base.config.use_cache = False  # a cache is of no use in training and conflicts with recomputation
    if not base.get_input_embeddings().weight.requires_grad:
        base.enable_input_require_grads()


def train_loss(engine, recipe: Recipe, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The first (for most tasks the only) training loss of one batch: for benchmarks and tests that step alone."""
    return next(iter(train_losses(engine, recipe, batch)))


def train_losses(engine, recipe: Recipe, batch: dict[str, torch.Tensor]) -> Iterator[torch.Tensor]:
    """The training losses of one batch, one per optimizer update (:meth:`rayft.tasks.Task.losses`): the task's
    own (pairwise, preference, RL) or the model's; usually one."""
    return recipe.task.losses(engine, on_device(batch, engine.device), recipe.task_params)


def make_loader(columns: dict[str, list[Any]], recipe: Recipe, pad_id: int, rank: int, world: int,
                *, train: bool, model: torch.nn.Module | None = None) -> DataLoader:
    """A loader over this rank's shard with the task's collator; evaluation shards pad to equal length
    (duplicates dedupe later). A streamed split (``data.engine: ray``) gives this rank's Ray Data shard instead.
    With ``train.curriculum`` the training rows come easiest first (``model``: whose loss ``by: loss`` ranks by)."""
    if isinstance(columns, StreamedSplit):
        return ShardLoader(columns, recipe, pad_id, rank, world, train=train)
    cfg, task = recipe.cfg, recipe.task
    collate = task.collate
    if train and cfg.train.packing:  # rows of several examples each (evaluation stays padded, one per row)
        columns, collate = task.pack(columns, cfg.model.max_length), task.collate_packed
    dataset = Columnar(columns)
    sampler = task.sampler(columns, cfg, rank, world, train=train) or DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=train, seed=cfg.train.seed, drop_last=False)
    if train and cfg.train.curriculum:
        from rayft.data.curriculum import curriculum_sampler, loss_difficulty

        sampler = curriculum_sampler(cfg, columns, rank, world, updates=task.updates_per_batch(recipe.task_params),
                                     loss=lambda: loss_difficulty(model, columns, collate, pad_id))
    return DataLoader(dataset, batch_size=cfg.train.batch_size if train else cfg.train.eval_batch_size,
                      sampler=sampler, collate_fn=lambda rows: collate(rows, pad_id))


def build_engine(model: torch.nn.Module, recipe: Recipe, steps: int, steps_per_epoch: int | None = None):
    """A DeepSpeed engine with a torch AdamW (decay off for biases/norms) and a transformers schedule.

    ``steps_per_epoch`` (optimizer steps) drives epoch-based gradual unfreezing; default: the whole run is one epoch.
    """
    import deepspeed
    from transformers import get_scheduler

    from rayft.train.checks import require_precision
    from rayft.train.deepspeed_internals import share_fp32_master_weights, use_in_place_collectives_on_gloo

    cfg = recipe.cfg
    require_precision(cfg.model.dtype, torch.cuda.is_available() and cfg.scaling.gpus_per_worker > 0)
    optimizer = torch.optim.AdamW(param_groups(model, recipe), lr=cfg.train.lr)
    warmup = int(round(cfg.train.warmup_ratio * steps))

    def schedule(opt: torch.optim.Optimizer):
        sched = get_scheduler(cfg.train.scheduler, opt, num_warmup_steps=warmup, num_training_steps=steps)
        return gate_schedule(sched, model, recipe, steps_per_epoch)

    use_in_place_collectives_on_gloo()  # ZeRO-3 on CPU workers: no copies of gathers and buckets
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                           config=deepspeed_config(cfg, _hidden_size(model)))
    share_fp32_master_weights(engine)  # ZeRO-3 on fp32 weights: no second copy of them (see there)
    return engine


def current_lr(engine) -> float:
    """The learning rate reported for a step: the largest of the optimizer's groups. With layer-wise decay or
    gradual unfreezing the groups differ (frozen ones are gated to 0, the embeddings' group first among them), and
    the top of the model's is the one the experiment's ``train.lr``/``head_lr`` names."""
    return float(max(engine.get_lr()))


def _hidden_size(model: torch.nn.Module) -> int | None:
    """The model's hidden size (its config's), which sizes DeepSpeed's buckets; None where it has none."""
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None)
    return size if isinstance(size, int) else None


def param_groups(model: torch.nn.Module, recipe: Recipe) -> list[dict[str, Any]]:
    """Optimizer groups: weight decay off for biases/norms. With ``method.layer_decay``/``method.head_lr`` (full,
    unfreeze) or gradual unfreezing, one group per depth: block ``i`` of ``n`` at ``lr * decay^(n - i)``, the
    embeddings at ``lr * decay^(n + 1)``, the head at ``head_lr``.

    Each group records its ``depth`` (0 embeddings, ``i + 1`` block ``i``, ``n + 1`` top and head) for the
    gradual-unfreezing gate.
    """
    from rayft.methods.layers import depth, is_head, num_blocks

    cfg = recipe.cfg
    extra = cfg.method_params()
    decay, head_lr = float(extra.get("layer_decay", 1.0)), extra.get("head_lr")
    by_depth = decay != 1.0 or head_lr is not None or recipe.gates_lr
    blocks = num_blocks(model)
    groups: dict[tuple[int, bool, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = by_depth and is_head(model, name)
        level = (blocks + 1 if head else depth(model, name, blocks)) if by_depth else blocks + 1
        lr = cfg.train.lr * decay ** (blocks + 1 - level)
        if head and head_lr is not None:
            lr = float(head_lr)
        no_decay = name.endswith(NO_DECAY)
        group = groups.setdefault((level, head, no_decay), {
            "params": [], "lr": lr, "depth": level,
            "weight_decay": 0.0 if no_decay else cfg.train.weight_decay})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def gate_schedule(sched, model: torch.nn.Module, recipe: Recipe, steps_per_epoch: int | None):
    """Multiply each group's schedule by the method's unfreezing gate (learning rate 0 while frozen), if it has one."""
    from rayft.methods.layers import num_blocks

    gate = recipe.lr_gate(num_blocks(model), steps_per_epoch or 10**12)
    if gate is None:
        return sched
    depths = [g.get("depth") for g in sched.optimizer.param_groups]
    if None in depths:
        raise RuntimeError("the optimizer's parameter groups lost their 'depth'; cannot gate unfreezing")
    sched.lr_lambdas = [lambda step, f=f, d=d: f(step) * gate(d, step) for f, d in zip(sched.lr_lambdas, depths)]
    for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(sched.last_epoch)  # the first step already runs gated
    return sched


def optimizer_settings(engine) -> list[dict[str, Any]]:
    """Each optimizer group's settings (lr, initial lr, weight decay, ...) without its parameters."""
    return [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]


def continue_schedule(engine, settings: list[dict[str, Any]]) -> None:
    """Continue another run's optimizer state under this run's learning rates and schedule.

    After loading a checkpoint written under other hyperparameters (a population-based-training clone), the
    optimizer's moments and the step count are the checkpoint's, while ``settings`` (taken from this engine
    before loading, see :func:`optimizer_settings`) and the schedule built from this config are put back:
    the learning rate is this schedule's value at the restored step.

    Raises:
        RuntimeError: if the checkpoint's optimizer groups do not match this model's.
    """
    groups = engine.optimizer.param_groups
    if len(groups) != len(settings):
        raise RuntimeError(f"the checkpoint has {len(groups)} optimizer groups, this model {len(settings)}: "
                           "it was written for another model or method")
    for group, own in zip(groups, settings):
        group.update(own)
    sched, step = engine.lr_scheduler, engine.global_steps
    if sched is None or not hasattr(sched, "lr_lambdas"):
        raise RuntimeError(f"cannot move the learning-rate schedule {type(sched).__name__} to step {step}")
    sched.last_epoch = step
    for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(step)
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]


def on_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors moved to ``device``; other values (an RL task's raw prompts and columns) as they are."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v for k, v in on_device(batch, device).items() if k != "index"}


@torch.no_grad()
def evaluate(engine, recipe: Recipe, loader: DataLoader) -> dict[str, float]:
    """Task metrics over the whole split: every rank evaluates its shard, rank results are gathered."""
    task = recipe.task
    engine.eval()
    parts = [task.eval_batch(engine, on_device(b, engine.device)) for b in loader]
    engine.train()
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, parts)
        parts = [p for rank_parts in gathered for p in rank_parts]
    return task.finish_eval_columns(parts, loader.dataset.columns)  # some metrics need the split's raw text


def save_model(engine, recipe: Recipe, data: PreparedData, out_dir: str, rank: int) -> None:
    """Write the result as ``save_pretrained`` does (adapter for peft methods, full model otherwise).

    Under ZeRO-3 the needed parameters are gathered first; every rank must call this.
    """
    import deepspeed

    cfg, method = recipe.cfg, recipe.method
    module = engine.module
    params = list(module.parameters()) if method.artifact == "full" else [p for p in module.parameters()
                                                                           if p.requires_grad]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=cfg.scaling.zero_stage == 3):
        if rank == 0 and method.artifact == "modules":
            method.save(module, out_dir)
        elif rank == 0:
            module.save_pretrained(out_dir, safe_serialization=True)
            if not method.is_peft:
                from rayft.models import load_tokenizer

                load_tokenizer(data.model_path).save_pretrained(out_dir)
        elif cfg.scaling.zero_stage == 3 and getattr(module, "_is_prompt_learning", False):
            _mirror_prompt_save(module)


def _mirror_prompt_save(module: torch.nn.Module) -> None:
    """What rank 0's ``save_pretrained`` computes for prompt-learning adapters, on the other ranks: it runs the
    prompt encoder, a forward pass whose parameter fetches are collective under ZeRO-3."""
    from peft import get_peft_model_state_dict

    for name in module.peft_config:
        get_peft_model_state_dict(module, adapter_name=name)
