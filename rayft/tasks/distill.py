"""Knowledge distillation: a stored teacher's predictions train a smaller student (``task: distill``).

The teacher is any store entry of a classification or generation task (``task.teacher: {id, store}``): a
``sequence_classification`` or ``token_classification`` result, or a causal LM trained with ``sft``, ``dpo`` or
``grpo``. The student learns the teacher's task: it reads the same data layout, gets the same head and labels (in the
teacher's order), reports the same metrics and is served on the same routes (:meth:`Distill.serves_for`). The loss is

    alpha * T^2 * KL(teacher || student, both softened by temperature T) + (1 - alpha) * CE(student, labels)

over every labelled position (one per row for sequence classification, each labelled token otherwise); ``T^2``
keeps the soft term's gradients on the scale of the hard one as T changes (Hinton et al., 2015).

The student is ``model.name`` (a catalog model or a local folder), whole, or cut to its first ``task.layers``
blocks (k). Cutting the teacher's own base is the usual choice (DistilBERT's initialisation from the teacher's
layers): the student starts with the teacher's embeddings and lower blocks and shares its tokenizer, which the
distillation needs anyway since the teacher reads the student's token ids. A student cut to k blocks is a new,
smaller model, so it trains with a full-weight method (``full``, ``bitfit``, ``unfreeze``...) and is stored whole:
an adapter on a cut base could not share a served base with anything. A whole student may use any method.

The teacher is loaded inside each Ray Train worker with :func:`rayft.store.load_for_inference` (frozen, in eval mode,
held outside the module tree so it is never trained, sharded or saved) and scores each training batch under
``torch.no_grad``. Before training (config validation and data preparation) the teacher is checked: its id is in the
store (the ids that would do are listed otherwise), its task is one of the supported ones, its labels are the data's,
the student's tokenizer is the teacher's (all when the data is prepared, the first step of ``rayft train`` and
``rayft sweep``), and k (also every k of the sweep space) is at most the student's blocks (already at validation).

A stored student reads its teacher's manifest (its task and task keys) from ``task.teacher.store`` when it is
loaded or served, so serve it from a machine that can read that store (usually the same one).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rayft.config.checks import register_check
from rayft.config.schema import ExperimentConfig, TaskConfig
from rayft.data.collate import IGNORE_INDEX
from rayft.errors import ConfigError, FieldError, RayftError
from rayft.tasks.base import Task, TaskParams, get_task, register_task, task_params

# The teacher's task -> the task the student learns (its data layout, head, metrics and serving routes).
STUDENT_TASK = {"sequence_classification": "sequence_classification",
                "token_classification": "token_classification", "sft": "sft", "dpo": "sft", "grpo": "sft"}
TEACHER_ATTR = "_rayft_teacher"  # kept outside nn.Module registration: never trained, sharded or saved
PARAMS_ATTR = "_rayft_distill_params"
FIGURES_ATTR = "_rayft_distill_figures"  # the last step's two terms, for the loop's train_* report


class TeacherSpec(BaseModel):
    """A stored result whose predictions the student learns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="the teacher's id in the store")
    store: str = Field("store", description="the adapter store holding the teacher (a local folder is made "
                                            "absolute where the config is read, so workers find it)")

    @field_validator("store")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return value if "://" in value else os.path.abspath(value)


class DistillParams(TaskParams):
    teacher: TeacherSpec
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher's soft targets (1 - alpha: the labels)")
    temperature: float = Field(2.0, gt=0, le=100, description="softens both distributions in the KL term")
    layers: int | None = Field(None, ge=1, description="keep the student's first k blocks; default: all of them")


@lru_cache(maxsize=32)
def _manifest(store: str, teacher_id: str) -> Any:
    """The teacher's manifest (cached: the server asks for it at every catalog refresh).

    Raises:
        ConfigError: for an unreadable store, an unknown id or an unsupported task, listing the ids that would do.
    """
    from rayft.store import AdapterStore

    try:
        found = AdapterStore(store)
        usable = sorted(m.adapter_id for m in found.list() if m.task in STUDENT_TASK)
        manifest = found.manifest(teacher_id) if found.exists(teacher_id) else None
    except RayftError as exc:
        raise ConfigError([FieldError("task.teacher.store", store, f"a readable adapter store ({exc})")]) from None
    known = f"teachers in {store}: {', '.join(usable) or 'none (export a classification or generation result)'}"
    if manifest is None:
        raise ConfigError([FieldError("task.teacher.id", teacher_id, f"the id of a stored result; {known}")])
    if manifest.task not in STUDENT_TASK:
        raise ConfigError([FieldError("task.teacher.id", teacher_id, f"a result of a task distillation supports "
                                      f"({', '.join(STUDENT_TASK)}), not {manifest.task!r}; {known}")])
    return manifest


def section_params(task: dict[str, Any]) -> DistillParams | None:
    """The distill parameters of a raw task section (a YAML's or a manifest's), or None where they do not validate."""
    try:
        return DistillParams.model_validate({k: v for k, v in task.items() if k not in ("name", "labels")})
    except ValidationError:
        return None


def teacher_section(manifest: Any) -> tuple[str, dict[str, Any]]:
    """(the task the student learns, the teacher's own task section when it is that task; else empty)."""
    name = STUDENT_TASK[manifest.task]
    return name, dict((manifest.config or {}).get("task") or {}) if manifest.task == name else {}


def teacher_manifest(params: DistillParams) -> Any:
    """The teacher's manifest (see :func:`_manifest`)."""
    return _manifest(params.teacher.store, params.teacher.id)


def student_config(cfg: ExperimentConfig) -> tuple[Task, ExperimentConfig]:
    """The task the student learns and ``cfg`` as that task reads it: the teacher's task section (its own keys,
    e.g. ``sft``'s format or ``token_classification``'s ``label_all_subwords``) in place of ``distill``'s.

    Raises:
        ConfigError: if the teacher cannot be used (see :func:`_manifest`).
    """
    manifest = teacher_manifest(task_params(get_task(Distill.name), cfg))
    name, own = teacher_section(manifest)
    own.update(name=name, labels=manifest.labels)
    return get_task(name), cfg.model_copy(update={"task": TaskConfig.model_validate(own)})


def block_list(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList] | None:
    """(parent, attribute, list) of the model's transformer blocks: the longest ``layer``/``layers``/``h``/``block``
    module list (the names every HF architecture uses, as :mod:`rayft.methods.layers` finds them)."""
    best = None
    for name, module in model.named_modules():
        for attr in ("layer", "layers", "h", "block", "blocks"):
            child = getattr(module, attr, None)
            if isinstance(child, torch.nn.ModuleList) and (best is None or len(child) > len(best[2])):
                best = (module, attr, child)
    return best


def keep_first_layers(model: torch.nn.Module, k: int) -> torch.nn.Module:
    """Cut ``model`` to its first ``k`` blocks in place (its config says so too, so it saves and reloads cut)."""
    found = block_list(model)
    if found is None or k >= len(found[2]):
        return model
    parent, attr, blocks = found
    setattr(parent, attr, torch.nn.ModuleList(list(blocks)[:k]))
    config = model.config
    config.num_hidden_layers = k
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:k]
    return model


def layer_count(path: str) -> int | None:
    """The number of blocks of the model at ``path`` from its config (None when it says none)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return next((config[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(config.get(k), int)),
                None)


def _sweep_layers(space: dict[str, Any]) -> list[int]:
    """Every k a sweep space may try for ``task.layers`` (the ends of an ``int`` range, each ``choice``)."""
    spec = space.get("task.layers") if isinstance(space, dict) else None
    if not isinstance(spec, dict):
        return []
    values = spec.get("choice") or spec.get("int") or []
    return [v for v in values if isinstance(v, int)]


def static_problems(params: DistillParams, model_name: str, method: str, space: dict[str, Any],
                    teacher: bool = True) -> list[FieldError]:
    """What can be checked from the model's config (k, the method of a cut student) and, with ``teacher``, from the
    store (the teacher's id and task, the method against the teacher's task)."""
    from rayft.methods import METHODS
    from rayft.models import resolve_model
    from rayft.tasks.base import method_problem

    errors = []
    try:
        blocks = layer_count(resolve_model(model_name))
    except RayftError:
        blocks = None  # an unknown model.name is the model check's to report
    for k in ([params.layers] if params.layers else []) + _sweep_layers(space):
        if blocks is not None and k > blocks:
            errors.append(FieldError("task.layers", k, f"at most the {blocks} blocks of the student {model_name!r}"))
    if (params.layers or _sweep_layers(space)) and method in METHODS and METHODS.get(method).artifact != "full":
        errors.append(FieldError("method.name", method, "a full-weight method (full, bitfit, unfreeze...) for a "
                                 "student cut to task.layers blocks: it is a new model and is stored whole"))
    if not teacher:
        return errors
    try:
        manifest = teacher_manifest(params)
    except ConfigError as exc:
        return exc.errors + errors
    problem = method_problem(get_task(STUDENT_TASK[manifest.task]), method)
    if problem:
        errors.append(FieldError("method.name", method, f"a method the teacher's task {manifest.task!r} supports "
                                                       f"({problem})"))
    return errors


def check_distill(raw: dict[str, Any]) -> list[FieldError]:
    """Config validation (registered with :mod:`rayft.config.checks`): k and the method of a cut student. The
    teacher is checked when the data is prepared, the first step of ``rayft train`` and ``rayft sweep``, so that an
    experiment validates before its teacher is trained."""
    task = raw.get("task") if isinstance(raw.get("task"), dict) else {}
    if task.get("name") != Distill.name:
        return []
    params = section_params(task)
    if params is None:
        return []  # the task's schema check reports it
    model, method = raw.get("model") or {}, raw.get("method") or {}
    sweep = raw.get("sweep") if isinstance(raw.get("sweep"), dict) else {}
    return static_problems(params, str(model.get("name", "")), str(method.get("name", "")),
                           sweep.get("space") or {}, teacher=False)


register_check(check_distill)


class Distill(Task):
    name = "distill"
    peft_task_type = "SEQ_CLS"  # the peft task type of the default student; build_model gives the teacher's head
    # every student task's metrics: a run reports those of its teacher's task
    metrics = ("loss", "accuracy", "f1_macro", "f1", "precision", "recall", "perplexity")
    default_metric = "eval_loss"
    default_mode = "min"
    stratify = True
    roles = {"text": "text_column", "label": "label_column"}  # read from the teacher: see roles_for
    default_columns = {"text": "text", "label": "label"}
    params = DistillParams

    def peft_task_type_for(self, cfg: ExperimentConfig) -> str:
        """The teacher's task's (a causal LM student is wrapped by peft as one)."""
        return student_config(cfg)[0].peft_task_type

    def serves_for(self, task: dict[str, Any]) -> str | None:
        """The routes of the teacher's task (classification, or completion and chat)."""
        manifest = _readable_teacher(task)
        return STUDENT_TASK[manifest.task] if manifest else None

    def roles_for(self, data: dict[str, Any], task: dict[str, Any], present: list[str]) -> tuple[dict, dict, dict]:
        """The student task's roles; none while the teacher cannot be read (that error comes from the checks)."""
        manifest = _readable_teacher(task)
        if manifest is None:
            return {}, {}, {}
        name, own = teacher_section(manifest)
        return get_task(name).roles_for(data, own, present)

    def labels(self, cfg: ExperimentConfig, df: pd.DataFrame, columns: dict[str, str]) -> list[str] | None:
        """The teacher's labels in its order, after every check of the teacher against this run.

        Raises:
            ConfigError: naming each problem: teacher, labels, tokenizer, k, method.
        """
        params = task_params(self, cfg)
        space = {k: v.model_dump(exclude_none=True) for k, v in cfg.sweep.space.items()}
        errors = static_problems(params, cfg.model.name, cfg.method.name, space)
        if any(e.path.startswith("task.teacher") for e in errors):
            raise ConfigError(errors)  # nothing more can be checked against a teacher that cannot be read
        student, inner = student_config(cfg)
        manifest = teacher_manifest(params)
        wanted = inner.task.labels
        if wanted is not None:
            found = student.labels(cfg.model_copy(update={"task": inner.task.model_copy(update={"labels": None})}),
                                   df, columns)
            extra = [x for x in found or [] if x not in wanted]
            if cfg.task.labels and list(cfg.task.labels) != list(wanted):
                errors.append(FieldError("task.labels", list(cfg.task.labels), f"the teacher's labels {wanted} (or "
                                                                               "none: they are taken from it)"))
            elif extra or (student.name == "sequence_classification" and set(found or []) != set(wanted)):
                errors.append(FieldError("task.teacher.id", params.teacher.id, f"a teacher trained on the data's "
                                         f"labels {sorted(found or [])}; it predicts {wanted}"))
        problem = _tokenizer_problem(manifest, cfg.model.name)
        if problem:
            errors.append(FieldError("task.teacher.id", params.teacher.id, problem))
        if errors:
            raise ConfigError(errors)
        return wanted

    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        student, inner = student_config(cfg)
        return student.tokenize(df, tokenizer, inner, columns, labels)

    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        """The student: the teacher task's head on ``path``, cut to ``task.layers`` blocks if set."""
        student, inner = student_config(cfg)
        model = student.build_model(path, inner, labels)
        layers = task_params(self, cfg).layers
        return keep_first_layers(model, layers) if layers else model

    def prepare_model(self, model: torch.nn.Module, params: DistillParams) -> torch.nn.Module:
        """Load the teacher from the store, frozen, beside the student (not inside its module tree)."""
        from rayft.store import AdapterStore, load_for_inference

        if params.alpha > 0:  # labels alone (alpha 0) need no teacher
            teacher, _, _ = load_for_inference(AdapterStore(params.teacher.store), params.teacher.id)
            model.__dict__[TEACHER_ATTR] = teacher.eval().requires_grad_(False)
        model.__dict__[PARAMS_ATTR] = params
        return model

    def compute_loss(self, model: Any, batch: dict[str, torch.Tensor], params: DistillParams) -> torch.Tensor:
        student_task = _student_task(model)
        logits, labels = aligned_logits(student_task, model, batch)
        soft = None
        if params.alpha > 0:
            teacher = teacher_of(model, batch["input_ids"].device)
            with torch.no_grad():
                soft, _ = aligned_logits(student_task, teacher, batch)
        loss, figures = distill_terms(logits, soft, labels, params.alpha, params.temperature)
        getattr(model, "module", model).__dict__[FIGURES_ATTR] = figures
        return loss

    def step_figures(self, model: Any) -> dict[str, float]:
        """``kl`` (teacher || student at T, before the T^2 weight) and ``ce`` (on the labels) of the last step."""
        return getattr(model, "module", model).__dict__.pop(FIGURES_ATTR, {})

    def eval_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        student_task = _student_task(model)
        return {**get_task(student_task).eval_batch(model, batch), "student_task": student_task}

    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        return self.finish_eval_columns(parts, {})

    def finish_eval_columns(self, parts: list[dict[str, Any]], columns: dict[str, list[Any]]) -> dict[str, float]:
        if not parts:
            return {"loss": 0.0}
        student = get_task(parts[0]["student_task"])
        return student.finish_eval_columns([{k: v for k, v in p.items() if k != "student_task"} for p in parts],
                                           columns)


def _readable_teacher(task: dict[str, Any]) -> Any:
    """The teacher's manifest for a raw task section, or None where it cannot be read."""
    params = section_params(task)
    try:
        return teacher_manifest(params) if params else None
    except ConfigError:
        return None


def _student_task(model: Any) -> str:
    """The task the student learns, from the teacher's manifest (the run's parameters are held on the model)."""
    params = getattr(model, "module", model).__dict__[PARAMS_ATTR]
    return STUDENT_TASK[teacher_manifest(params).task]


def teacher_of(model: Any, device: torch.device) -> torch.nn.Module:
    """The frozen teacher held beside ``model``, on ``device``."""
    teacher = getattr(model, "module", model).__dict__[TEACHER_ATTR]
    if next(teacher.parameters()).device != device:
        teacher.to(device)
    return teacher


def aligned_logits(student_task: str, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) at every labelled position, flattened to (N, classes) and (N,): one row per example for
    sequence classification, each labelled token for token classification, each next response token for a causal LM."""
    if student_task == "sft":
        from rayft.tasks.sft import token_logits

        logits, labels = token_logits(model, batch)[:, :-1], batch["labels"][:, 1:]
    else:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "index")}
        logits, labels = model(**inputs).logits.float(), batch["labels"]
        if logits.dim() == 3:
            logits = logits[:, -labels.size(1):]
    logits, labels = logits.reshape(-1, logits.size(-1)), labels.reshape(-1)
    keep = labels != IGNORE_INDEX
    return logits[keep], labels[keep]


def distill_terms(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, alpha: float,
                  temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * CE(student, labels)``, averaged over positions,
    and its two terms as figures (no teacher: alpha is 0, the loss is the cross-entropy alone)."""
    ce = F.cross_entropy(student, labels)
    if teacher is None:
        return ce, {"ce": ce.item()}
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher.float() / t, -1), log_target=True,
                  reduction="batchmean")
    return alpha * t * t * kl + (1 - alpha) * ce, {"kl": kl.item(), "ce": ce.item()}


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float,
                 temperature: float) -> torch.Tensor:
    """The distillation loss alone (see :func:`distill_terms`)."""
    return distill_terms(student, teacher, labels, alpha, temperature)[0]


def _tokenizer_problem(manifest: Any, model_name: str) -> str | None:
    """Why the student's token ids would not mean the same to the teacher, or None."""
    from rayft.models import load_tokenizer, resolve_model

    teacher_path = resolve_model(manifest.base_model)
    student_path = resolve_model(model_name)
    if Path(teacher_path) == Path(student_path):
        return None
    try:
        same = load_tokenizer(teacher_path).get_vocab() == load_tokenizer(student_path).get_vocab()
    except (OSError, ValueError) as exc:
        return f"a teacher whose tokenizer can be compared with the student's ({exc})"
    return None if same else (f"a teacher with the student's tokenizer: {manifest.base_model!r} and "
                              f"{model_name!r} split text into different token ids")


TASK = register_task(Distill())
