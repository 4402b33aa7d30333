"""The training loop that runs inside each Ray Train worker. It reads top to bottom:
set up → build model and DeepSpeed engine → restore → train, evaluating and checkpointing as it goes."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Any

import ray
import ray.train
import torch

from rayft.config.schema import ExperimentConfig
from rayft.data.packing import real_tokens
from rayft.methods import method_summary
from rayft.paths import quiet_libraries, setup_env
from rayft.train import continual
from rayft.train import engine as E
from rayft.train.handoff import MODEL_DIR, CheckpointState, LoopConfig, LoopState
from rayft.train.progress import worker_progress
from rayft.train.quiet import quiet_late_gloo_threads, quiet_worker_threads
from rayft.train.recipe import Recipe
from rayft.train.steps import steps_per_epoch, total_steps

DS_TAG = "ds"
# learning curves
HISTORY_KEYS = ("step", "epoch", "train_loss", "eval_", "test_", "lr", "samples_per_s", "tokens_per_s")


def driver_worker(threads: int = 1) -> tuple[int, int]:
    """Prepare a Ray Train worker that drives rayft's building blocks itself instead of running
    :func:`train_loop_per_worker` (the method benchmark, the method-table test): the shared environment, quiet
    libraries and ``threads`` torch threads. Returns the worker's (rank, world size)."""
    setup_env()
    quiet_libraries()
    torch.set_num_threads(threads)
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def train_loop_per_worker(config: LoopConfig | dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: the :class:`~rayft.train.handoff.LoopConfig` (or Ray's dict of it)."""
    started, marks = time.perf_counter(), {"loop_start": time.time()}  # start-up timeline (wall clock)
    loop = LoopConfig.parse(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    quiet_worker_threads(world)  # local Ray: its threads here (and gloo's, without peers) yield to this one
    setup_env()
    quiet_libraries()
    cfg = ExperimentConfig.model_validate(loop.experiment)
    recipe = Recipe.of(cfg)  # task, method and their parameters, resolved once for the whole loop
    data = ray.get(loop.data) if isinstance(loop.data, ray.ObjectRef) else loop.data
    torch.set_num_threads(max(1, int(cfg.scaling.torch_threads or cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    say = worker_progress(loop, rank)  # rank 0's progress: to the driver's console, or printed

    marks["data_ready"] = time.time()
    model = E.build_model(recipe, data)
    keep = continual.start(model, recipe, rank, world, say)  # train.continual_from: None without it
    marks["model_ready"] = time.time()
    info = method_summary(recipe.method, model, recipe.method_params)
    say(f"{cfg.method.name}: {info['trainable_params']:,} of {info['total_params']:,} parameters trainable "
        f"({info['trainable_pct']:.2f}%)")
    train_loader = E.make_loader(data.splits["train"], recipe, data.pad_id, rank, world, train=True, model=model)
    eval_loader = E.make_loader(data.splits["validation"], recipe, data.pad_id, rank, world, train=False)
    updates = recipe.task.updates_per_batch(recipe.task_params)  # optimizer updates per batch (PPO: several)
    steps, per_epoch = total_steps(cfg, len(train_loader), updates), steps_per_epoch(cfg, len(train_loader), updates)
    eval_every = cfg.train.eval_every or per_epoch  # once an epoch
    engine = E.build_engine(model, recipe, steps, steps_per_epoch=per_epoch)
    quiet_late_gloo_threads(world)  # DeepSpeed's own groups started loop threads of their own
    marks["engine_ready"] = time.time()
    unfreezing = _unfreeze_hook(engine, recipe, per_epoch, say)
    run = WorkerRun(engine, recipe, data, eval_loader, info, rank, world)

    state = _restore(engine, loop.start_checkpoint)
    resumed_from_step = state.step  # 0 on a fresh start; > 0 after a restart (lost worker, resumed sweep)
    resumed_from_trial, state = state.trial, replace(state, trial=loop.label)  # who wrote what we loaded
    if state.step:
        say(f"resumed at step {state.step} (epoch {state.epoch}, batch {state.batch})")
    window = _Window()
    first_step_s = first_step_at = None
    mark = time.perf_counter()
    while engine.global_steps < steps:
        train_loader.sampler.set_epoch(state.epoch)
        for i, batch in enumerate(train_loader):
            if i < state.batch:
                continue  # trained on before the checkpoint we resumed from
            before = engine.global_steps
            losses = []
            for loss in E.train_losses(engine, recipe, batch):  # one update per loss; usually one loss
                loss = keep.loss(engine, loss) if keep else loss  # replay and the EWC penalty
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
            now = time.perf_counter()
            window.add(sum(losses) / len(losses), len(batch["index"]), now - mark,  # includes loading the batch
                       recipe.task.step_figures(engine), real_tokens(batch))
            mark = now
            state = state.trained(i)
            if first_step_s is None:
                first_step_s, first_step_at = now - started, time.time()
            if engine.global_steps == before:
                continue  # still accumulating gradients
            step = engine.global_steps
            unfreezing(step)
            if _reached(before, step, cfg.train.log_every):
                say.step(step, steps, window.loss / window.n, E.current_lr(engine),
                         window.samples / max(window.seconds, 1e-9))
            if _reached(before, step, eval_every) or step >= steps:
                state = state.evaluating(len(train_loader))
                final = step >= steps
                metrics = _metrics(run, window, state, final)
                metrics.update(keep.report(engine, rank, world) if keep and final else {})  # forgetting
                metrics.update(startup_s=first_step_s, first_step_at=first_step_at,
                               resumed_from_step=resumed_from_step, resumed_from_trial=resumed_from_trial,
                               **_startup_phases(marks, first_step_at, loop))
                state = state.recorded({k: v for k, v in metrics.items() if k.startswith(HISTORY_KEYS)})
                save = final or state.evals % (cfg.train.checkpoint_every or 1) == 0
                _report(run, metrics, state, checkpoint=save)
                say.evaluated(metrics)
                window, mark = _Window(), time.perf_counter()  # evaluation time is not training time
            if step >= steps:
                break
        if state.batch >= len(train_loader):
            state = state.next_epoch()


def _reached(before: int, step: int, every: int) -> bool:
    """True when a multiple of ``every`` lies in ``(before, step]``: a batch may take several optimizer steps."""
    return step // every > before // every


@dataclass(frozen=True)
class WorkerRun:
    """What this worker's evaluations and reports work on; fixed for the whole loop."""

    engine: Any  # the DeepSpeed engine
    recipe: Recipe
    data: Any  # the PreparedData
    eval_loader: Any  # this rank's validation batches
    info: dict[str, Any]  # the method's parameter counts (reported with every evaluation)
    rank: int
    world: int


@dataclass(slots=True)
class _Window:
    """Training since the last evaluation: summed batch losses, batches, samples and seconds (loading the
    batches included), for the loss and throughput reported at the next evaluation."""

    loss: float = 0.0
    n: int = 0
    samples: int = 0
    seconds: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)  # the task's own per-step figures, summed
    tokens: int = 0  # real (non-padding) tokens

    def add(self, loss: float, samples: int, seconds: float, figures: dict[str, float] | None = None,
            tokens: int = 0) -> None:
        self.loss += loss
        self.tokens += tokens
        self.n += 1
        self.samples += samples
        self.seconds += seconds
        for name, value in (figures or {}).items():
            self.figures[name] = self.figures.get(name, 0.0) + value


def _startup_phases(marks: dict[str, float], first_step_at: float, loop: LoopConfig) -> dict[str, float]:
    """Where the time before the first step went, in seconds (``startup_*`` metrics).

    ``startup_launch_s``: from the Tune trial function's start to this worker's entry point (the Ray
    Train controller, the worker group, the torch process group; in a sweep a fresh worker process imports
    the training stack as it starts, see :mod:`rayft.train.preload`); ``startup_import_s``: importing the
    training stack in the loop; then getting the data, building the model, the DeepSpeed engine and the
    first step. ``startup_prestarted`` / ``startup_warm``: 1.0 where the process was started / had the training
    stack imported before the trial began.
    """
    phases = {"startup_data_s": marks["data_ready"] - marks["loop_start"],
              "startup_model_s": marks["model_ready"] - marks["data_ready"],
              "startup_engine_s": marks["engine_ready"] - marks["model_ready"],
              "startup_first_step_s": first_step_at - marks["engine_ready"]}
    # Called without rayft.train.entry (Ray's stock trainer, benchmarks/stock_trainer.py), the process imported the
    # training stack while unpickling the function, before the loop: no import phase is seen here.
    entered_at, trial_started_at = loop.entered_at or marks["loop_start"], loop.trial_started_at
    phases["startup_import_s"] = marks["loop_start"] - entered_at
    if trial_started_at:
        from rayft.train.preload import prestarted, started_warm

        phases["startup_launch_s"] = entered_at - trial_started_at
        phases["trial_startup_s"] = first_step_at - trial_started_at
        phases["startup_prestarted"] = float(prestarted(trial_started_at))  # 1: the process was ready and waiting
        phases["startup_warm"] = float(started_warm(trial_started_at))  # 1: ... with the training stack imported
    return {k: round(v, 3) for k, v in phases.items()}


def _restore(engine, start: Any = None) -> LoopState:
    """Load this run's latest Ray checkpoint into the engine, else ``start``; returns the loop position.

    ``start`` is a checkpoint of another run (population based training: a clone of a better trial). From it
    the model and the optimizer state are loaded and the step count continues, but this config's learning
    rates and schedule are kept — the schedule picks up at the restored step.
    """
    own = ray.train.get_checkpoint()
    checkpoint = own or start
    if checkpoint is None:
        return LoopState()
    settings = E.optimizer_settings(engine)
    with checkpoint.as_directory() as path:
        engine.load_checkpoint(path, tag=DS_TAG, load_module_strict=False, load_lr_scheduler_states=own is not None)
        state = CheckpointState.read(path).position  # the loop position only
    if own is None:
        E.continue_schedule(engine, settings)
    return state


def _metrics(run: WorkerRun, window: _Window, state: LoopState, final: bool) -> dict[str, Any]:
    """Evaluate on validation (and on test at the end) and assemble the report."""
    engine, recipe, data, eval_loader, world = run.engine, run.recipe, run.data, run.eval_loader, run.world
    timer = time.perf_counter()
    metrics: dict[str, Any] = {f"eval_{k}": v for k, v in E.evaluate(engine, recipe, eval_loader).items()}
    # Measured inference latency: milliseconds per validation example (batched forward passes, this rank).
    metrics["latency_ms"] = 1000 * (time.perf_counter() - timer) / max(1, len(eval_loader.sampler))
    if final and data.size("test"):
        test_loader = E.make_loader(data.splits["test"], recipe, data.pad_id, run.rank, world, train=False)
        metrics.update({f"test_{k}": v for k, v in E.evaluate(engine, recipe, test_loader).items()})
    samples_per_s = window.samples * world / max(window.seconds, 1e-9)
    metrics.update(
        step=engine.global_steps, epoch=round(state.progress, 4),
        train_loss=window.loss / max(window.n, 1), lr=E.current_lr(engine),
        samples_per_s=samples_per_s, tokens_per_s=window.tokens * world / max(window.seconds, 1e-9),
        final=final, **run.info,
        **{f"train_{k}": v / max(window.n, 1) for k, v in window.figures.items()},  # this rank's batches
    )
    return metrics


def _report(run: WorkerRun, metrics: dict[str, Any], state: LoopState, *, checkpoint: bool) -> None:
    """Report to Ray Train; with a checkpoint, every rank saves its DeepSpeed shard and rank 0 the model."""
    if not checkpoint:
        ray.train.report(metrics)
        return
    engine = run.engine
    with tempfile.TemporaryDirectory(prefix="rayft-ckpt-") as tmp:
        position = replace(state, step=engine.global_steps)
        engine.save_checkpoint(tmp, tag=DS_TAG, exclude_frozen_parameters=True)  # frozen = the base's own
        E.save_model(engine, run.recipe, run.data, os.path.join(tmp, MODEL_DIR), run.rank)
        if run.rank == 0:
            CheckpointState(position, metrics, run.data.labels, run.recipe.cfg.model_dump(mode="json")).write(tmp)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _unfreeze_hook(engine, recipe: Recipe, steps_per_epoch: int, say):
    """Gradual unfreezing: announce the training depths whenever they change (the gate lives in the schedule)."""
    from rayft.methods.layers import num_blocks

    gate = recipe.lr_gate(num_blocks(engine.module), steps_per_epoch)
    if gate is None:
        return lambda step: None
    depths = {g["depth"] for g in engine.optimizer.param_groups}
    seen: list[list[int]] = []

    def hook(step: int) -> None:
        live = sorted(d for d in depths if gate(d, step) > 0)
        if not seen or live != seen[-1]:
            say(f"step {step}: training depths {live} (0 = embeddings, {live[-1]} = head and top)")
            seen.append(live)

    return hook

