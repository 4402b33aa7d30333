"""Task ``distill`` without Ray: the loss, the cut student, the checks before training, a student learning its
teacher, a causal-LM teacher, and a stored student loading and serving on its teacher's routes."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from rayft.config import build_config
from rayft.data import prepare_data
from rayft.errors import ConfigError
from rayft.tasks.distill import TEACHER_ATTR, distill_loss, keep_first_layers
from rayft.train import engine as E
from rayft.train.recipe import Recipe
from tests.support import cls_config
from tests.support.teacher import store_teacher


@pytest.fixture(scope="module")
def bert_teacher(tiny_bert, sentiment_csv, tmp_path_factory):
    """A tiny BERT sentiment classifier, trained and stored as ``teacher``; returns (store, raw config)."""
    tmp = tmp_path_factory.mktemp("distill")
    raw = cls_config(tiny_bert, sentiment_csv, tmp)
    store_teacher(raw, tmp / "store", steps=40)
    return tmp / "store", raw


def distill_raw(raw: dict, store, **task) -> dict:
    return {**raw, "task": {"name": "distill", "teacher": {"id": "teacher", "store": str(store)}, **task},
            "method": {"name": "full"}}


def errors_of(raw: dict) -> list[tuple[str, object]]:
    with pytest.raises(ConfigError) as err:
        prepare_data(build_config(raw))
    return [(e.path, e.value) for e in err.value.errors]


def test_loss_is_alpha_t2_kl_plus_one_minus_alpha_ce():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    ce = F.cross_entropy(student, labels)
    p_t = (teacher / 3).softmax(-1)
    kl = (p_t * (p_t.log() - (student / 3).log_softmax(-1))).sum(-1).mean()  # KL(teacher || student) per row
    assert distill_loss(student, teacher, labels, 0.0, 3.0).item() == pytest.approx(ce.item())
    assert distill_loss(student, teacher, labels, 1.0, 3.0).item() == pytest.approx(9 * kl.item(), rel=1e-5)
    assert distill_loss(student, teacher, labels, 0.25, 3.0).item() == \
        pytest.approx(0.25 * 9 * kl.item() + 0.75 * ce.item(), rel=1e-5)
    assert distill_loss(teacher, teacher, labels, 1.0, 2.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_a_cut_student_keeps_its_first_blocks_and_reloads_cut(arch, tiny_bert, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path, auto = (tiny_bert, AutoModelForSequenceClassification) if arch == "bert" else (tiny_llama,
                                                                                         AutoModelForCausalLM)
    whole = auto.from_pretrained(path)
    cut = keep_first_layers(auto.from_pretrained(path), 1)
    assert cut.config.num_hidden_layers == 1 and whole.config.num_hidden_layers == 2
    first = {n: p for n, p in whole.named_parameters() if ".1." not in n and "classifier" not in n}
    assert all(torch.equal(p, dict(cut.named_parameters())[n]) for n, p in first.items())
    cut.save_pretrained(tmp_path)
    again = auto.from_pretrained(tmp_path)
    assert again.config.num_hidden_layers == 1
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in cut.parameters())


def test_each_problem_with_the_teacher_is_named_before_training(bert_teacher, tiny_llama, tmp_path):
    store, raw = bert_teacher
    unknown = distill_raw(raw, store, teacher={"id": "nope", "store": str(store)})
    build_config(unknown)  # validates: the teacher may be trained after the experiment is written
    with pytest.raises(ConfigError) as err:  # the data stage, before any training, names it
        prepare_data(build_config(unknown))
    [(path, value, expected)] = [(e.path, e.value, e.expected) for e in err.value.errors]
    assert (path, value) == ("task.teacher.id", "nope") and "teachers in" in expected and "teacher" in expected

    qa_store = tmp_path / "qa-store"
    store_teacher(raw, qa_store, steps=0, task="extractive_qa")
    with pytest.raises(ConfigError) as err:
        prepare_data(build_config(distill_raw(raw, qa_store)))
    assert [(e.path, e.value) for e in err.value.errors] == [("task.teacher.id", "teacher")]
    assert "not 'extractive_qa'" in err.value.errors[0].expected and "none" in err.value.errors[0].expected

    with pytest.raises(ConfigError) as err:  # k above the student's 2 blocks, here and in the sweep space
        build_config({**distill_raw(raw, store, layers=3),
                      "sweep": {"space": {"task.layers": {"choice": [1, 4]}}}})
    assert [(e.path, e.value) for e in err.value.errors] == [("task.layers", 3), ("task.layers", 4)]
    assert "at most the 2 blocks" in err.value.errors[0].expected

    with pytest.raises(ConfigError) as err:  # a cut student is a new model: an adapter on it could not be served
        build_config({**distill_raw(raw, store, layers=1), "method": {"name": "lora", "r": 4}})
    assert [(e.path, e.value) for e in err.value.errors] == [("method.name", "lora")]

    relabelled = tmp_path / "relabelled.csv"
    frame = pd.read_csv(raw["data"]["source"])
    frame.assign(sentiment=frame["sentiment"].replace("pos", "good")).to_csv(relabelled, index=False)
    assert errors_of({**distill_raw(raw, store), "data": {**raw["data"], "source": str(relabelled)}}) == \
        [("task.teacher.id", "teacher")]
    assert errors_of({**distill_raw(raw, store), "task": {**distill_raw(raw, store)["task"],
                                                          "labels": ["pos", "neg"]}}) == [("task.labels", ["pos", "neg"])]
    assert errors_of({**distill_raw(raw, store), "model": {"name": str(tiny_llama), "max_length": 32}}) == \
        [("task.teacher.id", "teacher")]  # another tokenizer: the teacher would read other tokens


def test_a_cut_student_learns_its_teachers_predictions(bert_teacher):
    store, raw = bert_teacher
    cfg = build_config(distill_raw(raw, store, layers=1, alpha=1.0, temperature=2.0))
    data = prepare_data(cfg)
    recipe = Recipe.of(cfg)
    torch.manual_seed(0)
    model = E.build_model(recipe, data)
    teacher = model.__dict__[TEACHER_ATTR]
    assert model.config.num_hidden_layers == 1 and data.labels == ["neg", "pos"]
    assert not any(p is q for p in model.parameters() for q in teacher.parameters())  # held beside, not inside
    assert not any(p.requires_grad for p in teacher.parameters())
    rows = [{k: v[i] for k, v in data.splits["validation"].items()} | {"index": i} for i in range(32)]
    batch = recipe.task.collate(rows, data.pad_id)

    def disagreement() -> float:
        model.eval()
        with torch.no_grad():
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "index")}
            return F.kl_div(model(**inputs).logits.log_softmax(-1), teacher(**inputs).logits.log_softmax(-1),
                            log_target=True, reduction="batchmean").item()

    before = disagreement()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # a random tiny base starts learning late
    train = data.splits["train"]
    for step in range(50):
        rows = [{k: v[(step * 16 + i) % len(train["labels"])] for k, v in train.items()} | {"index": i}
                for i in range(16)]
        loss = recipe.task.compute_loss(model, recipe.task.collate(rows, data.pad_id), recipe.task_params)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert all(p.grad is None for p in teacher.parameters())
    assert disagreement() < before / 2, before
    metrics = recipe.task.finish_eval([recipe.task.eval_batch(model, batch)])
    assert set(metrics) == {"loss", "accuracy", "f1_macro"} and math.isfinite(metrics["loss"])


def test_labels_only_needs_no_teacher_in_the_worker(bert_teacher):
    store, raw = bert_teacher
    cfg = build_config(distill_raw(raw, store, layers=1, alpha=0.0))
    data = prepare_data(cfg)
    recipe = Recipe.of(cfg)
    model = E.build_model(recipe, data).eval()  # no dropout: two forwards give the same logits
    assert TEACHER_ATTR not in model.__dict__
    rows = [{k: v[i] for k, v in data.splits["train"].items()} | {"index": i} for i in range(8)]
    batch = recipe.task.collate(rows, data.pad_id)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "index")}
    expected = F.cross_entropy(model(**inputs).logits, batch["labels"])
    assert recipe.task.compute_loss(model, batch, recipe.task_params).item() == pytest.approx(expected.item())


def test_a_causal_lm_teacher_trains_a_causal_lm_student(tiny_llama, chat_jsonl, tmp_path):
    from rayft.tasks.base import serving_task

    raw = cls_config(tiny_llama, chat_jsonl, tmp_path, task={"name": "sft"})
    raw["data"] = {"source": str(chat_jsonl), "validation_size": 8, "test_size": 0}
    store_teacher(raw, tmp_path / "store", steps=10)
    for method, layers in (({"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]}, None),
                           ({"name": "full"}, 1)):
        cfg = build_config({**distill_raw(raw, tmp_path / "store", layers=layers, alpha=0.7), "method": method})
        data = prepare_data(cfg)
        recipe = Recipe.of(cfg)
        assert recipe.task.peft_task_type_for(cfg) == "CAUSAL_LM" and data.labels is None
        assert serving_task("distill", cfg.model_dump(mode="json")) == "sft"
        model = E.build_model(recipe, data)
        rows = [{k: v[i] for k, v in data.splits["train"].items()} | {"index": i} for i in range(4)]
        batch = recipe.task.collate(rows, data.pad_id)
        loss = recipe.task.compute_loss(model, batch, recipe.task_params)
        assert torch.isfinite(loss) and loss.requires_grad
        metrics = recipe.task.finish_eval([recipe.task.eval_batch(model, batch)])
        assert set(metrics) == {"loss", "perplexity"}
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 1


def test_a_stored_student_loads_cut_and_serves_on_its_teachers_routes(bert_teacher, tmp_path):
    from rayft.models import fingerprint, load_tokenizer
    from rayft.serve.api import build_catalog
    from rayft.store import AdapterStore, Manifest, load_for_inference
    from rayft.store.compat import BaseInfo, check_compatible

    store, raw = bert_teacher
    cfg = build_config(distill_raw(raw, store, layers=1))
    data = prepare_data(cfg)
    recipe = Recipe.of(cfg)
    model = E.build_model(recipe, data)
    model.save_pretrained(tmp_path / "student")
    load_tokenizer(data.model_path).save_pretrained(tmp_path / "student")
    students = AdapterStore(tmp_path / "students")
    students.put(tmp_path / "student", Manifest(
        adapter_id="student", kind="full", base_model=cfg.model.name, base_fingerprint=fingerprint(data.model_path),
        method="full", task="distill", labels=data.labels, metrics={}, config=cfg.model_dump(mode="json")))
    loaded, _, manifest = load_for_inference(students, "student")
    assert loaded.config.num_hidden_layers == 1 and type(loaded).__name__ == "BertForSequenceClassification"
    check_compatible(students, manifest, {cfg.model.name: BaseInfo.of(cfg.model.name)})
    assert build_catalog([manifest])["student"].task == "sequence_classification"
