"""Continual learning (``train.continual_from``): learn a new task starting from a stored result of the same base,
keeping the previous one with elastic weight consolidation (``train.ewc``) and/or replay (``train.replay``).

Runs inside each Ray Train worker, before and around the DeepSpeed engine:

1. :func:`start` loads the stored result (``rayft.store.load.load_for_inference``: fingerprint checked) and copies
   its weights into the freshly built model wherever name and shape agree — the shared parameters. A stored
   parameter of another shape (the previous task's head, when the label sets differ) is kept aside: the
   *previous view* of the model (:class:`PreviousView`) runs the current weights with that head, so the previous
   task can still be evaluated and rehearsed.
2. The previous task's data is prepared again from the stored manifest's config (the same source, columns and
   seeded split), and its held-out metric measured before training (``previous_*_before``).
3. With ``ewc``, the diagonal empirical Fisher ``F_i = E[(∂ log p(y|x)/∂θ_i)²]`` is estimated on ``samples``
   training examples of the previous task, one example at a time (the plain model, before DeepSpeed wraps it;
   every rank computes the same numbers, so no communication is needed), and every training loss gets
   ``λ/2 · Σ F_i (θ_i − θ*_i)²`` over the shared trainable parameters, θ* the stored weights: zero at the anchor.
4. With ``replay``, each batch's loss becomes ``(1 − φ) L_new + φ L_previous`` on ``fraction × batch_size``
   previous-task examples (φ their share of the combined rows), as if they had been mixed into the batch.
5. The final report adds the previous task's metrics after training and ``forgetting_<metric>`` (before − after).

Every ZeRO stage works. At ZeRO-3 the penalty gathers each anchored parameter in turn
(``deepspeed.zero.GatheredParameters``, read-only) to add its term; the gradient then reaches the parameter through
DeepSpeed's own reduce-scatter. Every rank keeps θ* and F whole: for LoRA a few MB, for full fine-tuning two fp32
copies of the model, which ZeRO-3 does not partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

SUPPORTED_TASKS = ("sequence_classification", "token_classification")  # a logits head and class labels


class PreviousView:
    """The model as the previous task sees it: the current weights, with the previous task's own tensors (its
    head) in place of the current ones. Called like the model; ``eval``/``train``/``device`` as the evaluation loop
    needs.

    The own tensors are linear layers of another shape (the output projection of a head with another label set).
    While the view runs, a forward hook on each such layer returns the layer's input under the stored weight and
    bias. The layer itself, with its parameters, is left as it is. So ZeRO-3's parameter hooks see only the
    parameters they partitioned, which ``torch.func.functional_call``'s substitution would break.

    Raises:
        ValueError: if an own tensor is not the whole weight (and bias) of a linear layer.
    """

    def __init__(self, module: torch.nn.Module, own: dict[str, torch.Tensor]) -> None:
        self.module = module
        self.layers = _own_linears(module, own)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def eval(self) -> PreviousView:
        self.module.eval()
        return self

    def train(self, mode: bool = True) -> PreviousView:
        self.module.train(mode)
        return self

    def __call__(self, **inputs: Any) -> Any:
        device = self.device
        handles = [self.module.get_submodule(name).register_forward_hook(_answer_with(weight.to(device), bias))
                   for name, (weight, bias) in self.layers.items()]
        try:
            return self.module(**inputs)
        finally:
            for handle in handles:
                handle.remove()


def _answer_with(weight: torch.Tensor, bias: torch.Tensor | None) -> Callable:
    """A forward hook that makes a linear layer answer with ``weight`` and ``bias`` instead of its own."""

    def hook(_layer: torch.nn.Module, args: tuple, _output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.device, x.dtype))

    return hook


def _own_linears(module: torch.nn.Module, own: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """``own`` grouped by layer: ``{layer name: (weight, bias or None)}``."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in own.items():
        layer, _, attr = name.rpartition(".")
        layers.setdefault(layer, {})[attr] = tensor
    out = {}
    for layer, tensors in layers.items():
        target = module.get_submodule(layer)
        expected = {"weight"} | ({"bias"} if getattr(target, "bias", None) is not None else set())
        if not isinstance(target, torch.nn.Linear) or set(tensors) != expected:
            raise ValueError(f"the previous task's {', '.join(f'{layer}.{a}' for a in sorted(tensors))} must be the "
                             f"whole weight and bias of a linear layer to stand in for it; {layer} is "
                             f"{type(target).__name__}")
        out[layer] = (tensors["weight"], tensors.get("bias"))
    return out


def previous_loss(view: PreviousView, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the previous task's labels under the previous view (sequence or token labels; -100 masked).

    Computed from the logits: with the previous head the model's own ``num_labels`` may not match."""
    logits = view(**{k: v for k, v in batch.items() if k not in ("labels", "index")}).logits
    return F.cross_entropy(logits.float().flatten(0, -2), batch["labels"].flatten(), ignore_index=-100)


def fisher_diagonal(view: PreviousView, batches: Iterator[dict[str, torch.Tensor]],
                    params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher of ``params``: the mean over ``batches`` (one example each, for per-example
    gradients) of the squared gradient of the previous task's loss. Eval mode: dropout off."""
    was_training = view.module.training
    view.eval()
    names = list(params)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    count = 0
    for batch in batches:
        grads = torch.autograd.grad(previous_loss(view, batch), [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                fisher[n] += g.detach().float() ** 2
        count += 1
    view.train(was_training)
    return {n: f / max(count, 1) for n, f in fisher.items()}


def ewc_penalty(params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor],
                lam: float) -> torch.Tensor:
    """``λ/2 · Σ F_i (θ_i − θ*_i)²`` over the anchored parameters (zero at the anchor)."""
    total = None
    for name, theta in params.items():
        if name in anchor:
            f, star = fisher[name].to(theta.device), anchor[name].to(theta.device)
            term = (f * (theta.float() - star) ** 2).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * lam * total


def split_stored(model: torch.nn.Module, stored: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(shared, own): stored tensors of ``model``'s trainable parameters that fit it (same name and shape) and those
    of another shape (the previous task's head).

    Raises:
        ValueError: if a stored parameter that is not part of a head has another shape (another method setting).
    """
    from rayft.methods.layers import is_head

    shared, own = {}, {}
    for name, p in model.named_parameters():
        if not p.requires_grad or name not in stored:
            continue
        if stored[name].shape == p.shape:
            shared[name] = stored[name]
        elif "modules_to_save" in name or is_head(model, name):  # a peft-wrapped head, or a plain model's
            own[name] = stored[name]
        else:
            raise ValueError(f"stored parameter {name} has shape {tuple(stored[name].shape)}, this model's "
                             f"{tuple(p.shape)}: train.continual_from needs the method's settings it was made with")
    return shared, own


@dataclass
class Continual:
    """One worker's continual-learning state (see the module's docstring)."""

    previous: Any  # the previous task's Recipe
    data: Any  # the previous task's PreparedData
    own: dict[str, torch.Tensor]  # the previous task's own tensors (its head) by parameter name
    anchor: dict[str, torch.Tensor]  # θ*: the stored shared trainable parameters
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)
    lam: float = 0.0
    replay: Iterator[dict[str, torch.Tensor]] | None = None
    replay_share: float = 0.0  # φ: the previous task's share of a batch's rows
    before: dict[str, float] = field(default_factory=dict)
    held_out: str = "test"
    partitioned: bool = False  # ZeRO-3: the engine's parameters are partitioned over the ranks
    _params: dict[str, torch.nn.Parameter] | None = None
    _view: PreviousView | None = None

    def loss(self, engine, loss: torch.Tensor) -> torch.Tensor:
        """The training loss with replay mixed in and the EWC penalty added."""
        from rayft.train.engine import on_device

        module = engine.module
        if self.replay is not None:
            batch = on_device(next(self.replay), engine.device)
            loss = (1 - self.replay_share) * loss + self.replay_share * previous_loss(self.view(module), batch)
        if self.lam and self.fisher:
            if self._params is None:
                self._params = {n: p for n, p in module.named_parameters() if n in self.anchor}
            loss = loss + self.penalty().to(loss.device)
        return loss

    def view(self, module: torch.nn.Module) -> PreviousView:
        """The previous view of ``module``, built once (the engine trains the module ``start`` was given)."""
        if self._view is None or self._view.module is not module:
            self._view = PreviousView(module, self.own)
        return self._view

    def penalty(self) -> torch.Tensor:
        """The EWC penalty on the current parameters. Partitioned (ZeRO-3), one parameter is gathered at a time, so
        at most one whole parameter is held beyond what the step holds anyway."""
        if not self.partitioned:
            return ewc_penalty(self._params, self.anchor, self.fisher, self.lam)
        import deepspeed

        terms = []
        for name, p in self._params.items():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                terms.append(ewc_penalty({name: p}, self.anchor, self.fisher, self.lam))
        return torch.stack([t.to(terms[0].device) for t in terms]).sum() if terms else torch.zeros(())

    def evaluate(self, model: Any, rank: int = 0, world: int = 1) -> dict[str, float]:
        """The previous task's held-out metrics under the previous view of ``model`` (a module or an engine)."""
        from rayft.train.engine import evaluate, make_loader

        module = getattr(model, "module", model)
        loader = make_loader(self.data.splits[self.held_out], self.previous, self.data.pad_id, rank, world,
                             train=False)
        return evaluate(self.view(module), self.previous, loader)

    def report(self, engine, rank: int, world: int) -> dict[str, float]:
        """The final report's figures: the previous task's metrics before and after, and the forgetting."""
        after = self.evaluate(engine, rank, world)
        out = {f"previous_{self.held_out}_{k}_before": v for k, v in self.before.items()}
        out.update({f"previous_{self.held_out}_{k}": v for k, v in after.items()})
        out.update({f"forgetting_{k}": self.before[k] - after[k] for k in after if k != "loss"})
        return out


def start(model: torch.nn.Module, recipe: Any, rank: int, world: int,
          say: Callable[[str], None] = lambda _: None) -> Continual | None:
    """Load ``train.continual_from`` into ``model`` and set up EWC, replay and the previous task's evaluation;
    None without ``continual_from``. Call before the DeepSpeed engine is built.

    Raises:
        StoreError: for an unknown entry or a base-model fingerprint mismatch.
        ValueError: if the stored parameters do not fit this model's method settings.
    """
    cfg = recipe.cfg
    if not cfg.train.continual_from:
        return None
    from rayft.data.prepare import prepare_data
    from rayft.store.load import load_for_inference, manifest_config
    from rayft.store.store import AdapterStore
    from rayft.train.recipe import Recipe

    stored_model, _, manifest = load_for_inference(AdapterStore(cfg.store.path), cfg.train.continual_from)
    stored = {n: p.detach().clone() for n, p in stored_model.named_parameters()}
    del stored_model
    shared, own = split_stored(model, stored)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in shared:
                p.copy_(shared[name])
    previous_cfg = manifest_config(manifest)
    previous = Recipe.of(previous_cfg)
    data = prepare_data(previous_cfg, model_path=None)
    state = Continual(previous, data, own, anchor=shared, held_out="test" if data.size("test") else "validation",
                      partitioned=cfg.scaling.zero_stage == 3)
    state.before = state.evaluate(model)
    say(f"continual from {manifest.adapter_id}: {len(shared)} shared tensors, previous {manifest.task} "
        f"{state.held_out} " + ", ".join(f"{k} {v:.4f}" for k, v in state.before.items()))
    if cfg.train.ewc is not None:
        rows = _previous_rows(data, previous, cfg.train.ewc.samples, cfg.train.seed)
        params = {n: p for n, p in model.named_parameters() if n in shared}
        state.fisher, state.lam = fisher_diagonal(PreviousView(model, own), rows, params), cfg.train.ewc.lambda_
    if cfg.train.replay is not None:
        size = max(1, round(cfg.train.replay.fraction * cfg.train.batch_size))
        state.replay = _replay_batches(data, previous, size, rank, world, cfg.train.seed)
        state.replay_share = size / (size + cfg.train.batch_size)
    return state


def _previous_rows(data: Any, previous: Any, samples: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """``samples`` seeded training examples of the previous task, one per batch (per-example gradients)."""
    from rayft.data.collate import Columnar

    rows = Columnar(data.splits["train"])
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:samples].tolist()
    for j in pick:
        yield previous.task.collate([rows[j]], data.pad_id)


def _replay_batches(data: Any, previous: Any, size: int, rank: int, world: int,
                    seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's endless stream of previous-task training batches of ``size`` rows (a new seeded order each pass)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from rayft.data.collate import Columnar

    dataset = Columnar(data.splits["train"])
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=size, sampler=sampler,
                        collate_fn=lambda rows: previous.task.collate(rows, data.pad_id))
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1
