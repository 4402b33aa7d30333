"""Typed experiment schema: one root object, one section per stage.

Every model forbids unknown keys, so a typo is an error instead of a silently ignored setting.
Semantic checks that need registries or files (model/method/task names, data columns, sweep
parameters) live in :mod:`rayft.config.validate`, the later stages' own checks are registered through
:mod:`rayft.config.checks`, and all are reported together with these. :func:`default` gives every field's
default to code that reads raw mappings, so each default is written once, here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which base model to fine-tune: a catalog name, a local HF folder or a hub id."""

    name: str = Field(min_length=1)
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description=(
        "training precision through DeepSpeed (bf16, or fp16 with dynamic loss scaling; fp32 master weights); "
        "refused where the hardware lacks it"))
    max_length: int = Field(128, ge=8, le=8192)


class DataSplits(_Section):
    """Splits the user already has, used as they are (``data.splits``): files when ``data.source`` is left out,
    split names of ``data.source`` when it is a ``save_to_disk`` folder or a hub dataset."""

    train: str | None = Field(None, min_length=1)
    validation: str | None = Field(None, min_length=1)
    test: str | None = Field(None, min_length=1)

    def named(self) -> dict[str, str]:
        return {role: value for role, value in self.model_dump().items() if value}


DEFAULT_VALIDATION_SIZE = 0.1  # the sizes rayft splits with when validation_size / test_size are not set
DEFAULT_TEST_SIZE = 0.1


class DataConfig(_Section):
    """Where the examples come from and how they are split."""

    source: str | None = Field(
        None, min_length=1, description="catalog name, path to a csv/jsonl/json/parquet/conll file, a folder "
                                        "written by datasets' save_to_disk, or hub:<owner>/<name>")
    splits: DataSplits | None = Field(
        None, description="{train, validation, test}: files (without data.source) or the source's split names; "
                          "used as they are, never re-split")
    hub_config: str | None = Field(None, min_length=1, description="the config (subset) of a hub:<owner>/<name> source")
    format: Literal["auto", "csv", "jsonl", "json", "parquet", "conll"] = "auto"
    engine: Literal["memory", "ray"] = Field(
        "memory", description="memory: read, split and tokenize on the driver (any source); ray: stream parquet/"
                              "jsonl/csv files (local or any pyarrow filesystem URI) through Ray Data, tokenized on "
                              "the cluster, each worker fed its shard (docs/architecture.md: Streaming data)")
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    system_prompt: str | None = None
    max_samples: int | None = Field(None, ge=4, description="rows kept before splitting; per split when given")
    train_size: int | None = Field(None, ge=2)
    validation_size: float | int | None = Field(
        None, gt=0, description=f"when rayft splits: a fraction or a count (default {DEFAULT_VALIDATION_SIZE})")
    test_size: float | int | None = Field(
        None, ge=0, description=f"when rayft splits: a fraction or a count (default {DEFAULT_TEST_SIZE})")
    seed: int = 0
    columns: dict[str, str] = Field(
        default_factory=dict, description="task role -> column (e.g. {chosen: good, rejected: bad}); "
                                          "for roles without their own *_column key")

    def named_splits(self) -> dict[str, str]:
        """``data.splits`` as role → file or split name (empty when not set)."""
        return self.splits.named() if self.splits else {}

    @model_validator(mode="after")
    def _source_or_splits(self) -> "DataConfig":
        named = self.named_splits()
        if self.source is None and not named.get("train"):
            raise ValueError("data needs a source, or data.splits with the train file (and validation, test)")
        if self.source is None and "test" in named and "validation" not in named:
            raise ValueError("data.splits has a test file but no validation file: give both, or train alone")
        if self.hub_config is not None and not (self.source or "").startswith("hub:"):
            raise ValueError("data.hub_config applies to a hub:<owner>/<name> source only")
        return self


class TaskConfig(_Section):
    """What is learned: the head, the labels and the metrics. Task-specific keys (e.g. ``beta`` for
    ``dpo``) are checked by the task's own schema."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "sequence_classification"
    labels: list[str] | None = None

    def params(self) -> dict[str, Any]:
        """The task's own keys (everything except ``name`` and ``labels``)."""
        return dict(self.model_extra or {})


class MethodConfig(_Section):
    """How the base model is adapted. Method-specific keys are checked by the method's own schema."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "lora"


class CurriculumConfig(_Section):
    """Easy examples first (``train.curriculum``; rayft.data.curriculum): each batch is drawn from the easiest part
    of the training split, which grows from ``start_fraction`` to all of it by the pacing function."""

    by: Literal["length", "loss", "column"] = Field("length", description=(
        "difficulty: tokens per example, the base model's loss on it, or the numbers in `column`"))
    column: str | None = Field(None, min_length=1, description="by: column — the data column holding difficulty")
    pacing: Literal["linear", "root", "step"] = "linear"
    start_fraction: float = Field(0.25, gt=0, le=1, description="the easiest fraction drawn from at the start")
    steps: int = Field(4, ge=1, description="pacing: step — the equal steps from start_fraction to all")
    until: float = Field(0.5, gt=0, le=1, description="fraction of the run after which every example is drawn")

    @model_validator(mode="after")
    def _column(self) -> "CurriculumConfig":
        if (self.by == "column") != (self.column is not None):
            raise ValueError("curriculum.column is required with by: column, and only then")
        return self


class EwcConfig(_Section):
    """Elastic weight consolidation: λ/2·Σ F_i (θ_i − θ*_i)² added to the loss, F the previous task's diagonal
    Fisher estimated on ``samples`` of its training examples, θ* the stored result's weights."""

    # "lambda" is a Python keyword: the YAML key is ``lambda``, the attribute ``lambda_``
    lambda_: float = Field(1000.0, ge=0, alias="lambda")
    samples: int = Field(200, ge=1, le=100000)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True,
                              serialize_by_alias=True)


class ReplayConfig(_Section):
    """Rehearsal: every training batch also trains on ``fraction`` × batch_size examples of the previous task."""

    fraction: float = Field(0.25, gt=0, le=1)


class TrainConfig(_Section):
    epochs: float = Field(1.0, gt=0, le=1000)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1, le=4096, description="per worker, per micro-step")
    grad_accum: int = Field(1, ge=1, le=1024)
    lr: float = Field(1e-4, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0, le=1.0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1.0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_grad_norm: float = Field(1.0, ge=0)
    eval_every: int | None = Field(None, ge=1, description="steps between evaluations; default once per epoch")
    checkpoint_every: int | None = Field(None, ge=1, description="evaluations between checkpoints; default every one")
    log_every: int = Field(10, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    seed: int = 0
    packing: bool = Field(False, description=(
        "sft/dpo: several examples per row of model.max_length tokens, attention kept within each example; "
        "grpo/ppo: the update forwards pack each rollout's prompt + completion rows"))
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward: less memory")
    continual_from: str | None = Field(None, min_length=1, description=(
        "a store id of the same base to start from, learning this task while keeping its (docs/continual.md)"))
    ewc: EwcConfig | None = Field(None, description="with continual_from: {lambda, samples}")
    replay: ReplayConfig | None = Field(None, description="with continual_from: {fraction}")
    curriculum: CurriculumConfig | None = Field(None, description="{by, pacing, start_fraction} (docs/continual.md)")


class ScalingConfig(_Section):
    num_workers: int = Field(1, ge=1, le=1024)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    zero_stage: int = Field(2, ge=0, le=3)
    offload_optimizer: bool = False
    torch_threads: int | None = Field(None, ge=1, description="default: the worker's CPU allotment")
    # Placement on a cluster (Ray Train's ScalingConfig): how workers spread over nodes and what they reserve.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources per worker, e.g. {node_type_cpu: 1}; CPU/GPU above")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl with GPUs, else gloo")
    max_failures: int = Field(1, ge=-1, description="worker-group restarts from the last checkpoint (-1: no limit)")

    @model_validator(mode="after")
    def _placement(self) -> "ScalingConfig":
        reserved = sorted({"CPU", "GPU", "cpu", "gpu"} & set(self.resources_per_worker))
        if reserved:
            raise ValueError(f"resources_per_worker must not set {', '.join(reserved)}: use cpus_per_worker and "
                             "gpus_per_worker")
        if self.backend == "nccl" and self.gpus_per_worker <= 0:
            raise ValueError("backend nccl needs GPUs: set gpus_per_worker > 0 or use backend gloo/auto")
        return self


_Int = int  # the field named ``int`` below would shadow the builtin inside the class body


class SearchParam(_Section):
    """One search dimension: exactly one of the distribution keys."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    int: tuple[_Int, _Int] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "SearchParam":
        kinds = [k for k in ("loguniform", "uniform", "int", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of loguniform, uniform, int, choice (got {kinds or 'none'})")
        for k in ("loguniform", "uniform", "int"):
            bounds = getattr(self, k)
            if bounds is not None:
                low, high = bounds
                if not low < high:
                    raise ValueError(f"{k} bounds must satisfy low < high, got [{low}, {high}]")
                if k == "loguniform" and low <= 0:
                    raise ValueError(f"loguniform bounds must be > 0, got [{low}, {high}]")
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("loguniform", "uniform", "int", "choice") if getattr(self, k) is not None)


class Objective(_Section):
    """One objective of a multi-objective sweep (e.g. maximize eval_accuracy, minimize trainable_params)."""

    metric: str = Field(min_length=1)
    mode: Literal["max", "min"]


class PBTConfig(_Section):
    """Population based training (``sweep.scheduler: pbt``): every ``perturbation_interval`` evaluations a trial in
    the bottom ``quantile_fraction`` clones a top trial's checkpoint and continues with mutated learning-rate and
    schedule parameters."""

    perturbation_interval: int = Field(2, ge=1, description="evaluations between exploit/explore steps")
    burn_in: int = Field(0, ge=0, description="evaluations before a trial is first considered")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="bottom fraction clones the top fraction")
    resample_probability: float = Field(0.25, ge=0, le=1, description="resample a value instead of perturbing it")
    perturbation_factors: tuple[float, float] = Field((1.2, 0.8), description="factors for continuous values")
    mutate: list[str] | None = Field(None, description="space keys PBT mutates; default: every mutable one "
                                                       "(train.lr, train.scheduler, train.warmup_ratio, ...)")
    synch: bool = Field(False, description="wait for the whole population at each perturbation step")

    @model_validator(mode="after")
    def _factors(self) -> "PBTConfig":
        if any(f <= 0 for f in self.perturbation_factors):
            raise ValueError(f"perturbation_factors must be > 0, got {list(self.perturbation_factors)}")
        return self


class SweepConfig(_Section):
    num_trials: int = Field(6, ge=1, le=100000, description="trials to run (grid: ignored, the grid decides)")
    max_concurrent: int | None = Field(None, ge=1, description="default: as many as the cluster fits")
    searcher: Literal["optuna", "tpe", "random", "grid"] = "optuna"  # optuna = tpe (Optuna's TPE sampler)
    startup_trials: int | None = Field(None, ge=1, description=(
        "tpe: finished trials before TPE models their results; until then it draws at random (default: a third "
        "of num_trials, at least 2)"))
    scheduler: Literal["asha", "median", "pbt", "none"] = "asha"
    objectives: list[Objective] = Field(default_factory=list, description=(
        "multi-objective: the Pareto front over these is reported; the first one (or `metric`) drives the scheduler"))
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "per-method search space, used only when that method is chosen: {lora: {r: {choice: [4, 8]}}, full: {}}; "
        "a plain value fixes the parameter for that method"))
    storage: str | None = Field(None, description="Optuna storage (SQLAlchemy URL); default: SQLite beside the sweep")
    max_failures: int = Field(1, ge=-1, description="retries of a failed trial (-1: unlimited)")
    metric: str | None = Field(None, description="default: the task's main metric (e.g. eval_accuracy)")
    mode: Literal["max", "min"] | None = None
    grace_period: int = Field(1, ge=1, description="ASHA: evaluations before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    asha_promotion: Literal["eager", "deferred"] = Field("eager", description=(
        "ASHA, a trial at a rung with fewer than reduction_factor results to compare: eager continues it (Ray's "
        "rule); deferred pauses it until the rung has them, as in the ASHA paper (rayft.sweep.asha)"))
    pbt: PBTConfig = Field(default_factory=PBTConfig, description="scheduler: pbt settings")
    seed: int = 0
    space: dict[str, SearchParam] = Field(default_factory=dict)
    export_best: bool = True


class TrackingConfig(_Section):
    wandb: bool = True

    def resolved_mode(self) -> str:
        """The W&B mode in effect: the configured one, else online only when an API key is configured."""
        import os

        return self.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")

    project: str = "rayft"
    mode: Literal["offline", "online", "disabled"] | None = Field(
        None, description="default: online when WANDB_API_KEY is set, else offline (sync later with `wandb sync`)")
    dir: str | None = None


class StoreConfig(_Section):
    path: str = "store"


HEAD_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"  # a multi-task head: a metric prefix and a served id suffix
MULTITASK = "multitask"  # the task name ``tasks:`` trains under (rayft.tasks.multitask)
HEAD_TASKS = ("sequence_classification", "token_classification", "extractive_qa")  # what a multi-task head learns


class SubTaskConfig(_Section):
    """One task of a multi-task experiment (``tasks:``): its own data, task type, labels and head, on the shared
    base model and method. Task-specific keys (e.g. ``doc_stride``) are checked by that task's own schema."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field(pattern=HEAD_NAME, description="the head's name: metrics eval_<name>_<metric>, served <id>:<name>")
    task: str = "sequence_classification"
    data: DataConfig
    labels: list[str] | None = None
    max_length: int | None = Field(None, ge=8, le=8192, description="this task's tokens per example "
                                                                    "(default: model.max_length)")

    def params(self) -> dict[str, Any]:
        """The task's own keys (everything except ``name``, ``task``, ``data``, ``labels`` and ``max_length``)."""
        return dict(self.model_extra or {})


class MixConfig(_Section):
    """How multi-task training draws its batches: task ``t`` with probability ∝ ``weights[t]`` when given, else
    ∝ ``n_t^(1/temperature)`` (``n_t`` its training rows): 1 is proportional to size, larger flattens toward
    uniform."""

    temperature: float = Field(1.0, gt=0, le=1000)
    weights: dict[str, float] | None = Field(None, description="task name -> weight (every task named, >= 0)")

    @model_validator(mode="after")
    def _weights(self) -> "MixConfig":
        if self.weights is not None and (any(w < 0 for w in self.weights.values()) or not sum(self.weights.values())):
            raise ValueError(f"mix.weights must be >= 0 with a positive sum, got {self.weights}")
        return self


class ExperimentConfig(_Section):
    """The root of an experiment YAML."""

    name: str = Field("experiment", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    output_dir: str = "runs"
    model: ModelConfig
    data: DataConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    tasks: list[SubTaskConfig] | None = Field(None, min_length=2, description=(
        "multi-task: several tasks on one base and method, each with its own data and head (instead of task/data)"))
    mix: MixConfig | None = Field(None, description="with tasks: how batches are drawn per task")

    @model_validator(mode="before")
    @classmethod
    def _multitask_sections(cls, raw: Any) -> Any:
        """With ``tasks:``, ``task`` is ``multitask`` and ``data`` the first task's (what single-task code reads
        of them: the seed, the engine); both are filled in here, so a dumped config validates again as it is."""
        if isinstance(raw, dict) and isinstance(raw.get("tasks"), list) and raw["tasks"]:
            first = raw["tasks"][0]
            raw = {**raw}
            raw.setdefault("task", {"name": MULTITASK})
            if isinstance(first, dict) and "data" in first:
                raw.setdefault("data", first["data"])
            raw.setdefault("mix", {})
        return raw

    @model_validator(mode="after")
    def _multitask(self) -> "ExperimentConfig":
        if self.tasks is None:
            if self.task.name == MULTITASK:
                raise ValueError("task.name multitask is set by tasks: — give a list of tasks instead")
            if self.mix is not None:
                raise ValueError("mix applies to multi-task experiments only (tasks:)")
            return self
        if self.task.name != MULTITASK or self.task.labels or self.task.params():
            raise ValueError("with tasks:, leave task out: each entry of tasks names its own task and labels")
        if self.data != self.tasks[0].data:
            raise ValueError("with tasks:, leave data out: each entry of tasks has its own data")
        return self  # names and mix.weights: rayft.config.validate.check_tasks (with their paths)

    def method_params(self) -> dict[str, Any]:
        """The method's own keys (everything in ``method`` except ``name``)."""
        return dict(self.method.model_extra or {})

    def single_task(self, index: int) -> "ExperimentConfig":
        """Task ``index`` of a multi-task config as a single-task experiment: its own data and task section, the
        shared model, method, training and scaling (what its data preparation and checks run on)."""
        sub = self.tasks[index]
        raw = self.model_dump(mode="json", exclude={"tasks", "mix"}, by_alias=True)
        raw["data"] = sub.data.model_dump(mode="json")
        raw["task"] = {"name": sub.task, "labels": sub.labels, **sub.params()}
        raw["model"]["max_length"] = sub.max_length or self.model.max_length
        return ExperimentConfig.model_validate(raw)


def default(path: str) -> Any:
    """The schema's default of a dotted field path, e.g. ``default("task.name") == "sequence_classification"``.

    Checks that read raw YAML mappings use it for keys the user left out, so every default has one source.
    """
    model: Any = ExperimentConfig
    *sections, name = path.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[name].get_default(call_default_factory=True)
