"""Task modules without Ray: data layouts, label alignment, collators, losses, metrics and validation."""

from __future__ import annotations

import json

import pytest
import torch

from rayft.config import build_config
from rayft.config.validate import check_task
from rayft.data import IGNORE_INDEX, prepare_data, read_file
from rayft.data.collate import pad_pairs
from rayft.errors import ConfigError
from rayft.tasks import TASKS, get_task, method_problem
from tests.support import cls_config
from tests.support import tiny_tasks as tt


def _cfg(model, data, tmp_path, task: dict, **data_keys):
    raw = cls_config(model, data, tmp_path, task=task)
    raw["data"] = {"source": str(data), "validation_size": 8, "test_size": 0, **data_keys}
    raw["method"] = {"name": "full"}
    return build_config(raw)


def test_every_task_is_registered():
    assert {"sequence_classification", "sft", "token_classification", "extractive_qa", "dpo",
            "reward_model"} <= set(TASKS.names())


def test_conll_and_squad_files_are_read_into_rows(tmp_path):
    conll = tt.write_conll(tmp_path / "x.conll", tt.ner_rows(5))
    df = read_file(conll)
    assert list(df.columns) == ["tokens", "tags"] and len(df) == 5
    assert all(len(t) == len(g) for t, g in zip(df["tokens"], df["tags"]))
    squad = tmp_path / "qa.json"
    squad.write_text(json.dumps(tt.squad_doc(3)))
    df = read_file(squad)
    assert set(df.columns) >= {"id", "context", "question", "answers"} and len(df) == 3
    row = df.iloc[0]
    start = row["answers"]["answer_start"][0]
    assert row["context"][start:start + len(row["answers"]["text"][0])] == row["answers"]["text"][0]


def test_token_labels_sit_on_first_subwords(tiny_bert, tmp_path):
    from rayft.tasks.token_classification import align_labels

    assert align_labels([None, 0, 0, 1, None], [2, 1], None) == [IGNORE_INDEX, 2, IGNORE_INDEX, 1, IGNORE_INDEX]
    assert align_labels([None, 0, 0, 1, None], [2, 1], {2: 3}) == [IGNORE_INDEX, 2, 3, 1, IGNORE_INDEX]
    data = tt.write_conll(tmp_path / "ner.conll", tt.ner_rows(40))
    prepared = prepare_data(_cfg(tiny_bert, data, tmp_path, {"name": "token_classification"}))
    assert prepared.labels == ["O", "B-loc", "B-opinion", "I-opinion"]
    train = prepared.splits["train"]
    for ids, labels in zip(train["input_ids"], train["labels"]):
        assert len(ids) == len(labels) and labels[0] == labels[-1] == IGNORE_INDEX  # [CLS] and [SEP]


def test_seqeval_scores_entities_not_tokens():
    task = get_task("token_classification")
    gold = [["B-loc", "O", "B-opinion", "I-opinion"]]
    half = [["B-loc", "O", "B-opinion", "O"]]  # the second entity is cut short: it does not count
    part = {"loss_sum": 0.0, "tokens": 4, "index": [0], "pred": half, "gold": gold}
    metrics = task.finish_eval([part, {**part}])  # a padded duplicate from the other rank is counted once
    assert metrics["precision"] == pytest.approx(0.5) and metrics["recall"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.75)


def test_qa_windows_point_at_the_answer_and_metrics_follow_squad(tiny_bert, tmp_path):
    from rayft.tasks.extractive_qa import squad_scores

    data = tmp_path / "qa.json"
    data.write_text(json.dumps(tt.squad_doc(30)))
    cfg = _cfg(tiny_bert, data, tmp_path, {"name": "extractive_qa", "doc_stride": 4})
    cfg.model.max_length = 12  # force several windows per context
    prepared = prepare_data(cfg)
    train = prepared.splits["train"]
    assert len(train["input_ids"]) > prepared.raw_sizes["train"]  # long contexts were windowed
    for s, e, offsets, context, answers in zip(train["start_positions"], train["end_positions"], train["offsets"],
                                               train["context"], train["answers"]):
        if s:  # a window that holds the answer marks exactly its span
            assert context[offsets[s][0]:offsets[e][1]] == answers[0]
    assert squad_scores("The Paris.", ["paris"]) == (1.0, 1.0)
    assert squad_scores("paris france", ["paris"])[1] == pytest.approx(2 / 3)


def test_alpaca_and_chat_layouts_learn_only_the_answers(tiny_llama, tmp_path):
    from rayft.models import load_tokenizer

    tok = load_tokenizer(str(tiny_llama))
    for name, rows in (("alpaca", tt.alpaca_rows(20)), ("chat", tt.chat_rows(20))):
        data = tt.write_jsonl(tmp_path / f"{name}.jsonl", rows)
        prepared = prepare_data(_cfg(tiny_llama, data, tmp_path, {"name": "sft"}))
        assert prepared.columns == ({"instruction": "instruction", "output": "output", "input": "input"}
                                    if name == "alpaca" else {"messages": "messages"})
        ids, labels = prepared.splits["train"]["input_ids"][0], prepared.splits["train"]["labels"][0]
        learned = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
        answers = [a for _, a in tt.CHAT]
        assert any(a.split()[0] in learned for a in answers)
        assert "<|user|>" not in learned and "what" not in learned  # prompts are masked out
        if name == "chat":
            assert learned.count("<|end|>") == 2  # both assistant turns, each with its end marker


def test_preference_pairs_stack_chosen_then_rejected():
    feats = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "rejected_input_ids": [1, 4],
              "rejected_labels": [-100, 4], "index": 7}]
    batch = pad_pairs(feats, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [1, 4, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 4, -100]]
    assert batch["index"].tolist() == [7]


def test_dpo_loss_is_log2_at_the_reference_and_falls_with_the_margin(tiny_llama, tmp_path):
    from rayft.tasks.dpo import dpo_loss

    assert dpo_loss(torch.tensor([0.0]), 0.0).item() == pytest.approx(0.6931, abs=1e-4)
    assert dpo_loss(torch.tensor([2.0]), 0.0) < dpo_loss(torch.tensor([0.5]), 0.0)
    assert dpo_loss(torch.tensor([2.0]), 0.2) > dpo_loss(torch.tensor([2.0]), 0.0)  # smoothing doubts the labels
    data = tt.write_jsonl(tmp_path / "pref.jsonl", tt.preference_rows(24))
    cfg = _cfg(tiny_llama, data, tmp_path, {"name": "dpo", "beta": 0.3})
    prepared = prepare_data(cfg)
    from rayft.train.engine import build_model
    from rayft.train.recipe import Recipe

    recipe = Recipe.of(cfg)
    model = build_model(recipe, prepared)  # full fine-tune: a frozen reference copy is attached
    rows = [{k: v[i] for k, v in prepared.splits["train"].items()} | {"index": i} for i in range(4)]
    batch = get_task("dpo").collate(rows, prepared.pad_id)
    loss = get_task("dpo").compute_loss(model, batch, recipe.task_params)
    assert loss.item() == pytest.approx(0.6931, abs=1e-4) and loss.requires_grad
    assert not any(p.requires_grad for p in model.__dict__["_rayft_reference"].parameters())


def test_task_mistakes_are_config_errors(tiny_llama, tmp_path):
    data = tt.write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "hi", "good": "hello ."}] * 12)
    raw = cls_config(tiny_llama, data, tmp_path, task={"name": "dpo", "beta": -1, "temperature": 2})
    raw["data"] = {"source": str(data), "columns": {"chosen": "good"}}
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    by_path = {e.path: e.expected for e in info.value.errors}
    assert "greater than 0" in by_path["task.beta"]
    assert "beta" in by_path["task.temperature"] and "label_smoothing" in by_path["task.temperature"]
    assert "'rejected' role" in by_path["data.columns.rejected"] and "good" in by_path["data.columns.rejected"]


def test_methods_a_task_cannot_use_are_rejected_with_alternatives():
    assert method_problem(get_task("token_classification"), "lora") is None
    for task in ("token_classification", "extractive_qa"):
        errors = check_task({"name": task}, {"name": "prompt"})
        assert [e.path for e in errors] == ["method.name"]
        assert "virtual tokens" in errors[0].expected and "lora" in errors[0].expected
    assert check_task({"name": "sft", "format": "chat"}, {"name": "lora"}) == []


def test_catalog_wnut16_and_bbc_news_are_real_data():
    from rayft.data import DATASETS

    wnut = DATASETS.get("wnut16").load()
    assert len(wnut) == 2394 and {t for tags in wnut["tags"] for t in tags} >= {"O", "B-person", "I-person"}
    bbc = DATASETS.get("bbc_news").load()
    assert len(bbc) == 2225 and sorted(bbc["label"].unique()) == ["business", "entertainment", "politics",
                                                                   "sports", "tech"]


def test_results_carry_their_task_to_serving():
    from rayft.serve.api import build_catalog
    from rayft.store import Manifest

    def manifest(adapter_id, task, labels=None):
        return Manifest(adapter_id, "adapter", "smollm2-135m", "f" * 16, "lora", task, labels, {}, {})

    catalog = build_catalog([manifest("prefs", "dpo"), manifest("ner", "token_classification", ["O", "B-loc"])])
    assert catalog["prefs"].task == "sft"  # a DPO-tuned causal LM answers the completion and chat routes
    assert catalog["smollm2-135m"].kind == "base"
    assert catalog["ner"].task == "token_classification" and catalog["ner"].labels == ["O", "B-loc"]


def test_task_parameters_are_searchable(tiny_llama, tmp_path):
    data = tt.write_jsonl(tmp_path / "pref.jsonl", tt.preference_rows(24))
    raw = cls_config(tiny_llama, data, tmp_path, task={"name": "dpo"})
    raw["data"] = {"source": str(data)}
    raw["method"] = {"name": "lora", "target_modules": ["q_proj", "v_proj"]}
    raw["sweep"] = {"metric": "eval_reward_accuracy", "space": {"task.beta": {"choice": [0.1, 0.5]}}}
    assert build_config(raw).sweep.space["task.beta"].choice == [0.1, 0.5]
    raw["sweep"]["space"] = {"task.beta": {"uniform": [-1.0, 0.5]}, "task.gamma": {"choice": [1]}}
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    by_path = {e.path: e.expected for e in info.value.errors}
    assert "greater than 0" in by_path["sweep.space.task.beta"]
    assert "task.beta" in by_path["sweep.space.task.gamma"]


def test_conll_mistakes_name_the_line(tmp_path):
    from rayft.errors import DataError

    good = tmp_path / "ok.conll"
    good.write_text("-DOCSTART-\tO\n\nparis\tB-loc\nis\tO\n\nhello\tO\n")
    df = read_file(good)
    assert df["tokens"].tolist() == [["paris", "is"], ["hello"]]
    bad = tmp_path / "bad.conll"
    bad.write_text("paris\tB-loc\nlonely\n")
    with pytest.raises(DataError, match="line 2 has no tag"):
        read_file(bad)


def test_qa_takes_the_best_span_over_all_windows_of_an_example():
    task = get_task("extractive_qa")
    context = "the film was superb and long"
    offsets = [None, [0, 3], [4, 8], [9, 12], [13, 19], [20, 23], [24, 28], None]
    columns = {"offsets": [offsets, offsets], "context": [context] * 2, "example": [0, 0],
               "answers": [["superb"]] * 2, "max_answer_tokens": [30, 30]}
    weak = {"index": [0], "start": [[1]], "start_score": [[1.0]], "end": [[2]], "end_score": [[1.0]], "loss_sum": 1.0}
    strong = {"index": [1], "start": [[4, 0]], "start_score": [[5.0, 9.0]], "end": [[4, 0]], "end_score": [[5.0, 9.0]],
              "loss_sum": 3.0}  # position 0 scores higher but lies outside the context: never an answer
    metrics = task.finish_eval_columns([weak, strong], columns)
    assert metrics == {"loss": 2.0, "exact_match": 1.0, "f1": 1.0}
