"""Every registered method on every task, table-driven in the style of peft's ``TEST_CASES``, without Ray.

Each case builds the model through rayft's own path (the task's head, the method, the task's last touch), checks
the trainable-parameter summary, then takes one optimizer step on the task's own collator and loss with the
engine's parameter groups and learning-rate gate: the loss is finite and only what the summary calls trainable
moves. Pairs a task declares unsupported are refused by validation with one precise error on ``method.name``.
The integration twin (``tests/integration/test_methods.py``) trains each method inside a real Ray Train run.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from rayft.config import build_config
from rayft.data import IGNORE_INDEX, prepare_data
from rayft.errors import ConfigError
from rayft.methods import METHODS, method_summary
from rayft.tasks import TASKS, method_problem
from rayft.tasks.dpo import sequence_logps
from rayft.train import engine as E
from rayft.train.recipe import Recipe
from tests.support import cls_config
from tests.support import tiny_tasks as tt
from tests.support.method_cases import CASES, method_params
from tests.support.teacher import store_teacher

ARCHITECTURE = {  # task → the tiny model it is tested on
    "sequence_classification": "bert", "token_classification": "bert", "extractive_qa": "bert",
    "reward_model": "bert", "sft": "llama", "dpo": "llama", "grpo": "llama",
    "distill": "bert",  # its teacher: a stored classifier of the same tiny model (tests/support/teacher.py)
    "ppo": "llama",
    "multitask": "bert",  # a sentiment head and an NER head on one encoder
}
VIRTUAL_TOKENS = "prepends virtual tokens to the input"  # the prompt-learning methods' own check
UNSUPPORTED = [  # (method, task, what the one error on method.name says)
    ("prompt", "token_classification", VIRTUAL_TOKENS),
    ("ptuning", "token_classification", VIRTUAL_TOKENS),
    ("prefix", "token_classification", "the per-token head no longer lines up with the words"),
    ("prompt", "extractive_qa", VIRTUAL_TOKENS),
    ("ptuning", "extractive_qa", VIRTUAL_TOKENS),
    ("prefix", "extractive_qa", "the start/end heads no longer line up with the words"),
    *((m, "multitask", "the token-level and span heads would no longer line up") for m in ("prompt", "ptuning", "prefix")),
]
TEST_CASES = [(method, task, method_params(method, arch)) for task, arch in ARCHITECTURE.items() for method in CASES
              if (method, task) not in {(m, t) for m, t, _ in UNSUPPORTED}]
TASK_KEYS = {"grpo": {"rewards": [{"function": "tests.support.rewards:text_length"}], "group_size": 2,
                     "max_new_tokens": 3},  # a reward that differs between samples: every group has an advantage
             "ppo": {"rewards": [{"function": "tests.support.rewards:text_length"}], "max_new_tokens": 3,
                     "ppo_epochs": 1}}
ADAPTED = re.compile(r"lora_|ia3_|prompt_encoder|bottleneck_adapters")  # what an add-on method trains besides heads


class Table:
    """Per task: a raw config on its tiny model and data, and the data prepared once (methods do not change it)."""

    def __init__(self, models: dict, files: dict, tmp, keys: dict | None = None) -> None:
        self.raw, self.data = {}, {}
        for task, (arch, source, data_keys) in files.items():
            task_keys = {"name": task, **TASK_KEYS.get(task, {}), **(keys or {}).get(task, {})}
            raw = cls_config(models[arch], source, tmp, name=f"table-{task}", task=task_keys)
            raw["data"] = {"source": str(source), "validation_size": 8, "test_size": 0, **data_keys}
            raw["method"] = {"name": "full"}
            if task == "multitask":  # the tasks under tasks:, each with its own data (data_keys: the second's)
                del raw["task"], raw["data"]
                raw["tasks"] = [{"name": "sentiment", "data": {"source": str(source), "text_column": "review",
                                                               "label_column": "sentiment", "validation_size": 8}},
                                {"name": "ner", "task": "token_classification", "data": data_keys}]
            self.raw[task] = raw
            self.data[task] = prepare_data(build_config(raw))

    def config(self, task: str, method: dict):
        return build_config({**self.raw[task], "method": method})


@pytest.fixture(scope="module")
def table(tiny_bert, tiny_llama, sentiment_csv, chat_jsonl, tmp_path_factory) -> Table:
    tmp = tmp_path_factory.mktemp("table")
    squad = tmp / "qa.json"
    squad.write_text(json.dumps(tt.squad_doc(24)))
    store_teacher(cls_config(tiny_bert, sentiment_csv, tmp), tmp / "teachers", steps=0)  # distill's teacher
    files = {
        "sequence_classification": ("bert", sentiment_csv, {"text_column": "review", "label_column": "sentiment"}),
        "token_classification": ("bert", tt.write_conll(tmp / "ner.conll", tt.ner_rows(24)), {}),
        "extractive_qa": ("bert", squad, {}),
        "reward_model": ("bert", tt.write_jsonl(tmp / "pairs.jsonl", tt.review_pairs(24)), {}),
        "distill": ("bert", sentiment_csv, {"text_column": "review", "label_column": "sentiment"}),
        "sft": ("llama", chat_jsonl, {}),
        "dpo": ("llama", tt.write_jsonl(tmp / "pref.jsonl", tt.preference_rows(24)), {}),
        "grpo": ("llama", tt.write_jsonl(tmp / "prompts.jsonl", tt.rl_prompts(24)), {}),
        "ppo": ("llama", tmp / "prompts.jsonl", {}),
        "multitask": ("bert", sentiment_csv, {"source": str(tmp / "ner.conll"), "validation_size": 8}),
    }
    return Table({"bert": tiny_bert, "llama": tiny_llama}, files, tmp,
                 keys={"distill": {"teacher": {"id": "teacher", "store": str(tmp / "teachers")}}})


def test_the_table_covers_every_method_and_task():
    assert set(CASES) == set(METHODS.names()) and set(ARCHITECTURE) == set(TASKS.names())
    declared = {(m, t) for t in TASKS for m in METHODS if method_problem(TASKS.get(t), m)}
    assert {(m, t) for m, t, _ in UNSUPPORTED} == declared
    assert len(TEST_CASES) + len(UNSUPPORTED) == len(METHODS.names()) * len(TASKS.names())


@pytest.mark.parametrize("method,task,params", TEST_CASES, ids=[f"{m}-{t}" for m, t, _ in TEST_CASES])
def test_method_trains_on_task(method, task, params, table):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    recipe = Recipe.of(table.config(task, {"name": method, **params}))
    data = table.data[task]
    torch.manual_seed(0)
    model = E.build_model(recipe, data)

    info = method_summary(recipe.method, model, recipe.method_params)
    trainable = (recipe.method.trainable_at_start(model, recipe.method_params)
                 or {n for n, p in model.named_parameters() if p.requires_grad})
    assert 0 < info["trainable_params"] <= info["total_params"]
    assert (info["trainable_params"] == info["total_params"]) == (method == "full")

    optimizer = torch.optim.AdamW(E.param_groups(model, recipe), lr=1e-2)
    E.gate_schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), model, recipe, steps_per_epoch=1)
    rows = [{k: v[i] for k, v in data.splits["train"].items()} | {"index": i} for i in range(4)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = E.train_loss(model, recipe, recipe.task.collate(rows, data.pad_id))
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    optimizer.step()

    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]
    if recipe.method.artifact != "full":
        assert any(ADAPTED.search(n) for n in changed), "only the head trained"
    if task == "sequence_classification":  # the integration table's view of what may move
        assert all(re.search(CASES[method][1], n) for n in changed)

    model.eval()
    with torch.no_grad():
        batch = recipe.task.collate(rows, data.pad_id)
        metrics = recipe.task.finish_eval_columns([recipe.task.eval_batch(model, batch)], data.splits["train"])
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    if "labels" in batch and recipe.task.peft_task_type == "CAUSAL_LM":  # own token arithmetic = the model's loss
        labelled = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        with torch.no_grad():
            expected = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss
            assert -sequence_logps(model, batch).sum() / labelled == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("method,task,says", UNSUPPORTED, ids=[f"{m}-{t}" for m, t, _ in UNSUPPORTED])
def test_unsupported_pair_is_refused_precisely(method, task, says, table):
    with pytest.raises(ConfigError) as err:
        table.config(task, {"name": method, **method_params(method, ARCHITECTURE[task])})
    assert [(e.path, e.value) for e in err.value.errors] == [("method.name", method)]
    assert says in err.value.errors[0].expected and repr(task) in err.value.errors[0].expected


def test_hooks_a_task_or_method_leaves_out_have_documented_defaults():
    from rayft.data.collate import pad_batch
    from rayft.methods import Method
    from rayft.tasks import Task
    from rayft.tasks.base import serving_task

    class Bare(Task):
        name, roles, default_columns = "bare", {"text": "text_column"}, {"text": "text"}

        def tokenize(self, df, tokenizer, cfg, columns, labels):
            return {}

        def build_model(self, path, cfg, labels):
            return torch.nn.Linear(1, 1)

        def eval_batch(self, model, batch):
            return {"n": len(batch["index"])}

        def finish_eval(self, parts):
            return {"n": float(sum(p["n"] for p in parts))}

    class Frozen(Method):
        name = "frozen"

        def apply(self, model, params, task_type):
            return model.requires_grad_(False)

    task, method, model = Bare(), Frozen(), torch.nn.Linear(1, 1)
    rows = [{"input_ids": [1, 2, 3], "index": 0}, {"input_ids": [4], "index": 1}]
    assert {k: v.tolist() for k, v in task.collate(rows, 0).items()} == \
        {k: v.tolist() for k, v in pad_batch(rows, 0).items()}
    assert task.roles_for({}, {}, []) == ({"text": "text_column"}, {}, {"text": "text"})
    assert task.finish_eval_columns([{"n": 2}], {"text": ["a", "b"]}) == {"n": 2.0}
    assert task.prepare_model(model, task.params()) is model and task.labels(None, None, {}) is None
    assert task.unsupported_methods == {} and task.serves_as is None and serving_task("dpo") == "sft"
    assert method.check(method.params(), None) == [] and method.prepare_base(model, None) is model
    assert method.trainable_at_start(model, None) is None and method.lr_gate(None, 2, 1) is None
    assert (method.artifact, method.is_peft, method.hot_swappable, method.zero3, method.quantized) == \
        ("full", False, False, True, False)
    with pytest.raises(TypeError, match="abstract"):
        type("NoApply", (Method,), {"name": "x"})()  # what every method must provide is enforced


def test_a_recipe_resolves_once_what_the_engine_asks(tiny_bert, sentiment_csv, tmp_path):
    from rayft.methods import get_method
    from rayft.tasks import get_task

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path)
    lora = Recipe.of(build_config(raw))
    assert lora.task is get_task("sequence_classification") and lora.method is get_method("lora")
    assert lora.method_params.r == 4 and not lora.gates_lr and lora.lr_gate(2, 1) is None
    raw["method"] = {"name": "unfreeze", "every": 2}
    unfreeze = Recipe.of(build_config(raw))
    assert unfreeze.gates_lr and unfreeze.lr_gate(2, 1)(3, 0) == 1.0 and unfreeze.lr_gate(2, 1)(1, 0) == 0.0
