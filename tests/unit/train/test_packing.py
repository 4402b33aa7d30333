"""Sequence packing: attention stays within each example (its logits packed equal its logits alone), the loss
mask is unchanged, pairs keep their log-probabilities, and a restarted loader continues at the same example."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rayft.config import build_config
from rayft.data import prepare_data
from rayft.data.collate import Columnar, pad_batch, pad_pairs
from rayft.data.packing import pack_split, pad_packed, real_tokens
from rayft.tasks.dpo import sequence_logps
from rayft.tasks.sft import TASK as SFT
from rayft.tasks.sft import model_inputs
from rayft.train import engine as E
from rayft.train.recipe import Recipe
from tests.support import REPO, cls_config, sft_config

PREFERENCES = REPO / "tests" / "fixtures" / "preferences.jsonl"


def _sft_cfg(tiny_llama, chat_jsonl, tmp_path, **train):
    return build_config(sft_config(tiny_llama, chat_jsonl, tmp_path,
                                   train={"packing": True, "batch_size": 2, **train}))


@pytest.fixture(scope="module")
def sft(tiny_llama, chat_jsonl, tmp_path_factory):
    cfg = _sft_cfg(tiny_llama, chat_jsonl, tmp_path_factory.mktemp("sft"))
    return cfg, prepare_data(cfg)


def _model(path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert model.config._attn_implementation == "sdpa"  # the CPU path: a block-diagonal mask from position ids
    return model


def test_an_examples_logits_are_the_same_packed_or_alone(sft):
    cfg, data = sft
    model = _model(data.model_path)
    train = data.splits["train"]
    packed = pad_packed([Columnar(pack_split(train, 64))[0]], data.pad_id)
    assert len(packed["index"]) >= 3 and "attention_mask" not in packed  # several examples in one row
    with torch.no_grad():
        logits = model(**model_inputs(packed)).logits[0]
        start = 0
        for example in packed["index"].tolist():
            ids = torch.tensor([train["input_ids"][example]])
            alone = model(input_ids=ids).logits[0]
            torch.testing.assert_close(logits[start:start + ids.size(1)], alone, atol=1e-5, rtol=1e-5)
            start += ids.size(1)


def test_prompt_labels_stay_masked_and_the_loss_is_the_padded_one(sft):
    cfg, data = sft
    train = data.splits["train"]
    rows = Columnar(pack_split(train, 48))
    batch = pad_packed([rows[0], rows[1]], data.pad_id)
    examples = batch["index"].tolist()
    for row in range(2):  # each example's labels, taken back out of the packed row, are its own labels
        for example in set(rows[row]["example"]):
            taken = [lab for lab, e in zip(batch["labels"][row].tolist(), rows[row]["example"]) if e == example]
            assert taken == train["labels"][example]
    model = _model(data.model_path)
    padded = pad_batch([{k: train[k][e] for k in ("input_ids", "labels")} for e in examples], data.pad_id)
    with torch.no_grad():
        torch.testing.assert_close(SFT.compute_loss(model, batch, None), SFT.compute_loss(model, padded, None),
                                   atol=1e-5, rtol=1e-5)
    assert real_tokens(batch) == int(padded["attention_mask"].sum()) == sum(len(train["input_ids"][e])
                                                                            for e in examples)


def test_packed_pairs_keep_their_log_probabilities(tiny_llama, tmp_path):
    raw = cls_config(tiny_llama, PREFERENCES, tmp_path, task={"name": "dpo"}, train={"packing": True})
    raw["data"].update(text_column=None, label_column=None, validation_size=2, test_size=0)
    raw["method"] = {"name": "full"}
    data = prepare_data(build_config(raw))
    train = data.splits["train"]
    rows = Columnar(pack_split(train, 32, pairs=True))
    batch = pad_packed([rows[i] for i in range(min(2, len(rows)))], data.pad_id)
    examples = batch["index"].tolist()
    assert len(examples) >= 2
    padded = pad_pairs([{k: v[e] for k, v in train.items()} | {"index": e} for e in examples], data.pad_id)
    model = _model(data.model_path)
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(model, batch), sequence_logps(model, padded), atol=1e-4, rtol=1e-5)


def test_a_restarted_loader_continues_at_the_same_example(sft, tiny_llama, chat_jsonl, tmp_path):
    cfg, data = sft
    recipe = Recipe.of(cfg)
    seen = []
    for rank in range(2):
        first = E.make_loader(data.splits["train"], recipe, data.pad_id, rank, 2, train=True)
        again = E.make_loader(data.splits["train"], recipe, data.pad_id, rank, 2, train=True)  # after a restart
        for loader in (first, again):
            loader.sampler.set_epoch(1)
        batches = [b["index"].tolist() for b in first]
        resumed = [b["index"].tolist() for i, b in enumerate(again) if i >= 2]  # skips what it trained on
        assert resumed == batches[2:]
        seen += [e for b in batches for e in b]
    # Every example is trained on once an epoch (DistributedSampler repeats a row to even out an odd count).
    assert set(seen) == set(range(data.size("train")))


def test_rows_cut_or_dropped_at_max_length_are_reported_per_split(tiny_llama, chat_jsonl, tmp_path):
    from rayft.data.prepare import describe_lengths

    cfg = _sft_cfg(tiny_llama, chat_jsonl, tmp_path)
    short = cfg.model_copy(update={"model": cfg.model.model_copy(update={"max_length": 12})})
    report = prepare_data(short).stats["lengths"]
    assert set(report) == {"train", "validation"}
    for split in report.values():
        assert split["rows"] == split["kept"] + split["dropped"]
    assert report["train"]["at_max_length"] > 0  # the longer exchanges are cut at 12 tokens
    full = prepare_data(cfg).stats["lengths"]["train"]
    assert full["at_max_length"] == full["dropped"] == 0
    assert "train" in describe_lengths(report, 12) and "at the limit" in describe_lengths(report, 12)


def test_the_sweep_counts_the_packed_rows_the_workers_train_on(sft):
    from rayft.data.packing import training_rows
    from rayft.train.steps import batches_per_epoch

    cfg, data = sft
    rows = training_rows(cfg, data)
    assert rows < data.size("train")  # several examples a row
    loader = E.make_loader(data.splits["train"], Recipe.of(cfg), data.pad_id, 0, 1, train=True)
    assert batches_per_epoch(cfg, rows) == len(loader)


def test_tasks_without_packing_say_so_by_default():
    from rayft.tasks import get_task

    assert get_task("sequence_classification").pack({"input_ids": [[1, 2]]}, 8) is None
