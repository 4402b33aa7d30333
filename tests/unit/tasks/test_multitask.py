"""Multi-task training without Ray: the config (``tasks:``, ``mix:``), the batch sampler, the shared-encoder model
against transformers' own heads, data preparation, evaluation, and the store's per-head views."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from rayft.config import build_config
from rayft.config.loader import apply_overrides
from rayft.data.mixing import TaskMixSampler, mix_probabilities
from rayft.errors import ConfigError, StoreError
from tests.support import cls_config, tiny
from tests.support import tiny_tasks as tt
from tests.unit.train.test_continual import topic_csv


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("multitask")
    squad = tmp / "qa.json"
    squad.write_text(json.dumps(tt.squad_doc(40)))
    return {"sentiment": _csv(tmp / "reviews.csv", tiny.sentiment_rows(120)),
            "topic": topic_csv(tmp / "topics.csv", 90),
            "ner": tt.write_conll(tmp / "ner.conll", tt.ner_rows(60)), "qa": squad}


def _raw(model: Path, files: dict[str, Path], tmp: Path, *, qa: bool = False, **sections) -> dict:
    raw = cls_config(model, files["sentiment"], tmp, **sections)
    del raw["data"]
    cls = {"text_column": "review", "label_column": "sentiment", "validation_size": 20, "test_size": 10}
    raw["tasks"] = [
        {"name": "sentiment", "data": {"source": str(files["sentiment"]), **cls}},
        {"name": "topic", "data": {"source": str(files["topic"]), **cls}},
        {"name": "ner", "task": "token_classification",
         "data": {"source": str(files["ner"]), "validation_size": 10, "test_size": 10}},
    ] + ([{"name": "qa", "task": "extractive_qa", "max_length": 48,
           "data": {"source": str(files["qa"]), "validation_size": 8, "test_size": 0}}] if qa else [])
    return raw


# ---------------------------------------------------------------- config


def test_tasks_set_the_task_and_data_sections_and_a_dumped_config_validates_again(tiny_bert, files, tmp_path):
    cfg = build_config({**_raw(tiny_bert, files, tmp_path), "mix": {"temperature": 2.0}})
    assert cfg.task.name == "multitask" and cfg.data == cfg.tasks[0].data and cfg.mix.temperature == 2.0
    again = build_config(cfg.model_dump(mode="json"))
    assert again == cfg
    single = cfg.single_task(2)
    assert single.task.name == "token_classification" and single.data.source == str(files["ner"])
    assert single.tasks is None and single.method == cfg.method and single.train == cfg.train


def test_a_task_has_its_own_max_length_and_parameters(tiny_bert, files, tmp_path):
    cfg = build_config(_raw(tiny_bert, files, tmp_path, qa=True))
    qa = cfg.single_task(3)
    assert qa.model.max_length == 48 and cfg.single_task(0).model.max_length == cfg.model.max_length
    raw = apply_overrides(_raw(tiny_bert, files, tmp_path), ["tasks.2.label_all_subwords=true"])
    assert build_config(raw).single_task(2).task.params() == {"label_all_subwords": True}


def test_bad_multitask_configs_name_each_field(tiny_bert, files, tmp_path):
    raw = _raw(tiny_bert, files, tmp_path, mix={"weights": {"sentiment": 1.0}}, train={"curriculum": {"by": "length"}})
    raw["tasks"][1]["name"] = "sentiment"
    raw["tasks"][2]["task"] = "dpo"
    raw["tasks"][0]["data"]["text_column"] = "nope"
    raw["tasks"][0]["doc_stride"] = 3
    raw["method"] = {"name": "prefix"}
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    found = {e.path: e for e in info.value.errors}
    assert {"tasks", "tasks.2.task", "tasks.0.data.text_column", "tasks.0.doc_stride", "mix.weights",
            "train.curriculum", "method.name"} <= set(found), found
    assert "sentiment repeat" in found["tasks"].expected
    assert "virtual tokens" in found["method.name"].expected
    assert "it has: review, sentiment" in found["tasks.0.data.text_column"].expected
    assert "it takes: name, task, data, labels, max_length" in found["tasks.0.doc_stride"].expected


def test_tasks_and_task_or_mix_alone_are_refused(tiny_bert, files, tmp_path):
    with pytest.raises(ConfigError, match="leave task out"):
        build_config({**_raw(tiny_bert, files, tmp_path), "task": {"name": "sequence_classification"}})
    with pytest.raises(ConfigError, match="mix applies to multi-task"):
        build_config(cls_config(tiny_bert, files["sentiment"], tmp_path, mix={"temperature": 2}))
    one = _raw(tiny_bert, files, tmp_path)
    one["tasks"] = one["tasks"][:1]
    with pytest.raises(ConfigError, match="tasks"):
        build_config(one)
    with pytest.raises(ConfigError, match="an index of that list"):
        apply_overrides(_raw(tiny_bert, files, tmp_path), ["tasks.7.name=x"])


def test_the_sweep_takes_per_head_metrics_and_the_mixing_temperature(tiny_bert, files, tmp_path):
    sweep = {"metric": "eval_topic_accuracy", "space": {"mix.temperature": {"choice": [1.0, 3.0]}}}
    assert build_config(_raw(tiny_bert, files, tmp_path, sweep=sweep)).sweep.metric == "eval_topic_accuracy"
    with pytest.raises(ConfigError, match="eval_topic_accuracy"):
        build_config(_raw(tiny_bert, files, tmp_path, sweep={"metric": "eval_accuracy"}))


def test_a_sweep_searches_one_tasks_mixing_weight(tiny_bert, files, tmp_path):
    from rayft.sweep.space import apply_sample

    space = {"mix.weights.topic": {"choice": [1.0, 3.0]}}
    cfg = build_config(_raw(tiny_bert, files, tmp_path, sweep={"space": space},
                            mix={"weights": {"sentiment": 1, "topic": 1, "ner": 0.5}}))
    trial = apply_sample(cfg.model_dump(mode="json"), {"mix.weights.topic": 3.0})
    assert trial.mix.weights == {"sentiment": 1, "topic": 3.0, "ner": 0.5}
    with pytest.raises(ConfigError) as info:
        build_config(_raw(tiny_bert, files, tmp_path, sweep={"space": {"mix.weights.nope": {"choice": [1.0]},
                                                                       "mix.weights.ner": {"choice": [-1.0]}}},
                          mix={"weights": {"sentiment": 1, "topic": 1, "ner": 1}}))
    found = {e.path: e.expected for e in info.value.errors}
    assert "for a task of tasks: sentiment, topic, ner" in found["sweep.space.mix.weights.nope"]
    assert found["sweep.space.mix.weights.ner"] == "a weight >= 0"
    with pytest.raises(ConfigError, match="mix.weights set for every task"):
        build_config(_raw(tiny_bert, files, tmp_path, sweep={"space": space}))


# ---------------------------------------------------------------- mixing


def test_mixing_probabilities_follow_size_temperature_and_weights():
    assert mix_probabilities([300, 100]) == pytest.approx([0.75, 0.25])
    assert mix_probabilities([400, 100], temperature=2.0) == pytest.approx([20 / 30, 10 / 30])
    assert mix_probabilities([400, 100], temperature=1000.0) == pytest.approx([0.5, 0.5], abs=1e-3)
    assert mix_probabilities([400, 100], weights=[1.0, 3.0]) == pytest.approx([0.25, 0.75])


def _batches(sampler: TaskMixSampler, groups: list[list[int]]) -> list[tuple[int, list[int]]]:
    rows = list(sampler)
    assert len(rows) == len(sampler)
    task_of = {i: t for t, g in enumerate(groups) for i in g}
    out = []
    for start in range(0, len(rows), sampler.batch_size):
        batch = rows[start:start + sampler.batch_size]
        tasks = {task_of[i] for i in batch}
        assert len(tasks) == 1 and len(batch) == sampler.batch_size  # one task per batch, always full
        out.append((tasks.pop(), batch))
    return out


def test_every_batch_is_one_task_and_every_rank_draws_the_same_tasks():
    groups = [list(range(0, 50)), list(range(50, 70)), list(range(70, 77))]
    probs = mix_probabilities([len(g) for g in groups])
    ranks = [TaskMixSampler(groups, probs, 4, r, 2, seed=3, train=True) for r in range(2)]
    batches = [_batches(s, groups) for s in ranks]
    assert [t for t, _ in batches[0]] == [t for t, _ in batches[1]]  # the same head at every step (ZeRO-3)
    assert len(batches[0]) == 7 + 3 + 1  # one pass over each task's share: ceil(25/4) + ceil(10/4) + ceil(4/4)
    assert not set(batches[0][0][1]) & set(batches[1][0][1]) or batches[0][0][0] == 2  # ranks split the rows
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != list(TaskMixSampler(groups, probs, 4, 0, 2, seed=3, train=True))  # a new epoch reshuffles


def test_tasks_are_drawn_in_proportion_to_their_probabilities():
    groups = [list(range(0, 600)), list(range(600, 800))]
    sampler = TaskMixSampler(groups, [0.25, 0.75], 4, 0, 1, seed=0, train=True)
    counts: Counter = Counter()
    for epoch in range(10):
        sampler.set_epoch(epoch)
        counts.update(sampler.order())
    share = counts[1] / sum(counts.values())
    assert 0.72 < share < 0.78  # drawn past its own 50 batches: a task starts its next pass within the epoch


def test_evaluation_reads_every_row_of_every_task_once_over_the_ranks():
    groups = [list(range(0, 13)), list(range(13, 18))]
    seen = []
    for rank in range(2):
        for task, batch in _batches(TaskMixSampler(groups, [0.5, 0.5], 4, rank, 2, seed=0, train=False), groups):
            seen += batch
    assert set(seen) == set(range(18))  # padding repeats rows (deduplicated by index in evaluation)


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("kind", ["sequence_classification", "token_classification", "extractive_qa"])
def test_each_head_computes_what_the_transformers_head_of_its_task_does(tiny_bert, kind):
    from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)

    from rayft.tasks.multitask_model import HeadSpec, HeadView, build

    labels = ("a", "b", "c")
    spec = HeadSpec("h", kind, () if kind == "extractive_qa" else labels)
    ours = build(str(tiny_bert), [HeadSpec("other", "sequence_classification", ("x", "y")), spec]).eval()
    cls = {"sequence_classification": AutoModelForSequenceClassification,
           "token_classification": AutoModelForTokenClassification,
           "extractive_qa": AutoModelForQuestionAnswering}[kind]
    theirs = cls.from_pretrained(str(tiny_bert), num_labels=spec.outputs).eval()
    head = theirs.qa_outputs if kind == "extractive_qa" else theirs.classifier
    ours.heads["h"].classifier.load_state_dict(head.state_dict())
    ids = torch.tensor([[2, 10, 11, 12, 3, 0], [2, 13, 14, 3, 0, 0]])
    mask = (ids != 0).long()
    inputs = {"input_ids": ids, "attention_mask": mask}
    gold = ({"labels": torch.tensor([0, 2])} if kind == "sequence_classification" else
            {"labels": torch.tensor([[-100, 1, 0, 2, -100, -100], [-100, 2, 1, -100, -100, -100]])}
            if kind == "token_classification" else
            {"start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 9])})
    with torch.no_grad():
        mine, ref = HeadView(ours, 1, spec)(**inputs, **gold), theirs(**inputs, **gold)
    assert torch.allclose(mine.loss, ref.loss, atol=1e-5)
    for name in ("start_logits", "end_logits") if kind == "extractive_qa" else ("logits",):
        assert torch.allclose(getattr(mine, name), getattr(ref, name), atol=1e-5)


def test_the_last_real_token_summarises_a_decoder_sequence_on_either_side(tiny_llama):
    from rayft.tasks.multitask_model import HeadSpec, HeadView, build

    spec = HeadSpec("h", "sequence_classification", ("a", "b"))
    model = HeadView(build(str(tiny_llama), [spec]).eval(), 0, spec)
    right = {"input_ids": torch.tensor([[5, 6, 7, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    alone = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    with torch.no_grad():
        assert torch.allclose(model(**right).logits, model(**alone).logits, atol=1e-5)


def test_a_batch_without_its_task_is_an_error(tiny_bert):
    from rayft.tasks.multitask_model import HeadSpec, build

    model = build(str(tiny_bert), [HeadSpec("h", "sequence_classification", ("a", "b"))])
    with pytest.raises(ValueError, match="needs the batch's 'task'"):
        model(input_ids=torch.tensor([[2, 3]]))


# ---------------------------------------------------------------- data, training step, evaluation


def test_each_task_is_prepared_by_its_own_task_and_trained_and_evaluated_per_head(tiny_bert, files, tmp_path):
    from rayft.data import prepare_data
    from rayft.train import engine as E
    from rayft.train.recipe import Recipe

    cfg = build_config({**_raw(tiny_bert, files, tmp_path, qa=True), "method": {"name": "full"}})
    data = prepare_data(cfg)
    assert data.labels[:2] == ["sentiment/neg", "sentiment/pos"] and "ner/O" in data.labels
    assert data.stats["tasks"]["topic"] == {"train": 60, "validation": 20, "test": 10}
    train = data.splits["train"]
    assert Counter(train["task"]) == {0: 90, 1: 60, 2: 40, 3: len(train["task"]) - 190}
    assert train["start_positions"][0] is None and train["start_positions"][-1] is not None
    recipe = Recipe.of(cfg)
    model = E.build_model(recipe, data)
    loader = E.make_loader(train, recipe, data.pad_id, 0, 1, train=True)
    batch = next(iter(loader))
    loss = recipe.task.compute_loss(model, batch, recipe.task_params)
    loss.backward()
    head = ["sentiment", "topic", "ner", "qa"][int(batch["task"][0])]
    assert model.heads[head].classifier.weight.grad is not None
    assert all(h.classifier.weight.grad is None for n, h in model.heads.items() if n != head)
    model.eval()
    evaluation = E.make_loader(data.splits["validation"], recipe, data.pad_id, 0, 1, train=False)
    parts = [recipe.task.eval_batch(model, b) for b in evaluation]
    metrics = recipe.task.finish_eval_columns(parts, evaluation.dataset.columns)
    assert {"sentiment_accuracy", "topic_f1_macro", "ner_f1", "qa_exact_match", "qa_f1", "score", "loss"} <= set(metrics)
    mains = [metrics["sentiment_accuracy"], metrics["topic_accuracy"], metrics["ner_f1"], metrics["qa_f1"]]
    assert metrics["score"] == pytest.approx(sum(mains) / 4)


# ---------------------------------------------------------------- store


def _manifest(**kw):
    from rayft.store import Manifest

    config = {"tasks": [{"name": "sentiment", "task": "sequence_classification"},
                        {"name": "ner", "task": "token_classification"}]}
    base = dict(adapter_id="mt", kind="adapter", base_model="b", base_fingerprint="f", method="lora", task="multitask",
                labels=["sentiment/neg", "sentiment/pos", "ner/O", "ner/B-loc"],
                metrics={"eval_score": 0.7, "eval_sentiment_accuracy": 0.9, "test_ner_f1": 0.5}, config=config)
    return Manifest(**{**base, **kw})


def test_a_multitask_entry_is_listed_with_a_view_per_head(tmp_path):
    from rayft.store import AdapterStore
    from rayft.store.heads import head_manifests

    views = {m.adapter_id: m for m in head_manifests(_manifest())}
    assert set(views) == {"mt:sentiment", "mt:ner"}
    s = views["mt:sentiment"]
    assert (s.task, s.labels, s.head, s.swappable) == ("sequence_classification", ["neg", "pos"], "sentiment", False)
    assert s.metrics == {"eval_accuracy": 0.9} and views["mt:ner"].metrics == {"test_f1": 0.5}
    store = AdapterStore(tmp_path / "store")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "adapter_model.safetensors").write_bytes(b"x")
    store.put(tmp_path / "w", _manifest())
    assert [m.adapter_id for m in store.list()] == ["mt"]
    assert {m.adapter_id for m in store.list(heads=True)} == {"mt", "mt:sentiment", "mt:ner"}
    assert store.manifest("mt:ner").labels == ["O", "B-loc"] and store.path("mt:ner") == store.path("mt")
    assert store.exists("mt:ner") and not store.exists("mt:topic")
    with pytest.raises(StoreError, match="its heads: mt:sentiment, mt:ner"):
        store.manifest("mt:topic")
    with pytest.raises(StoreError, match="not a head name"):
        store.manifest("mt:../x")


def test_a_multitask_entry_is_served_by_its_heads_and_exports_whole(tmp_path):
    from rayft.export.formats import problem
    from rayft.store.compat import IncompatibleError, check_compatible

    with pytest.raises(IncompatibleError, match="each head is served under its own id: mt:sentiment, mt:ner"):
        check_compatible(None, _manifest(), {})
    from rayft.store.heads import head_manifest

    assert "exports whole" in problem(head_manifest(_manifest(), "ner"), "onnx")
    assert problem(_manifest(), "adapter") is None and "multitask" in problem(_manifest(), "merged")
