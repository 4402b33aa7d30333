"""Curriculum learning without Ray: the pacing schedules, the sampler's pools, ranks and epochs, the resume
position, difficulty by length, loss and column, and a missing column refused before training."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from rayft.config import build_config
from rayft.config.schema import CurriculumConfig
from rayft.data.curriculum import CurriculumSampler, competence, difficulty, loss_difficulty
from rayft.errors import ConfigError
from tests.support import cls_config


def test_pacing_schedules_start_at_the_start_fraction_and_reach_everything():
    for pacing in ("linear", "root", "step"):
        values = [competence(pacing, 0.2, t / 20, steps=4) for t in range(21)]
        assert values[0] == pytest.approx(0.2) and values[-1] == pytest.approx(1.0)
        assert all(a <= b for a, b in zip(values, values[1:]))  # never shrinks
    assert competence("linear", 0.2, 0.5) == pytest.approx(0.6)
    assert competence("root", 0.2, 0.5) == pytest.approx(np.sqrt(0.04 + 0.96 * 0.5))
    assert competence("step", 0.2, 0.49, steps=4) == pytest.approx(0.2 + 0.8 * 1 / 4)  # one step of four taken
    assert competence("step", 0.2, 0.5, steps=4) == pytest.approx(0.6)


def _sampler(n=64, world=2, rank=0, epochs=2.0, **spec) -> CurriculumSampler:
    scores = np.arange(n, dtype=float)[::-1]  # row n-1 easiest ... row 0 hardest
    return CurriculumSampler(scores, CurriculumConfig(**{"start_fraction": 0.25, "until": 0.5, **spec}), rank=rank,
                             world=world, batch_size=4, seed=3, planned_epochs=epochs)


def test_early_batches_come_from_the_easiest_rows_and_ranks_split_each_global_batch():
    first, second = _sampler(rank=0), _sampler(rank=1)
    batches = first.global_batches(0)
    assert len(batches) == first.batches == 8  # 64 rows / 2 ranks / 4 per batch
    easiest = set(range(48, 64))  # the easiest quarter
    assert set(batches[0].tolist()) <= easiest
    ours, theirs = list(first), list(second)
    assert len(ours) == len(theirs) == len(first) == 32
    for b, pick in enumerate(batches):
        assert sorted(ours[4 * b:4 * b + 4] + theirs[4 * b:4 * b + 4]) == sorted(pick.tolist())
    # later in the epoch the pool has grown to harder rows
    assert first.pool_size(0, 7) > first.pool_size(0, 0)


def test_after_until_an_epoch_is_a_seeded_permutation_and_epochs_differ():
    sampler = _sampler(rank=0, world=1)
    sampler.set_epoch(1)  # the run is 2 epochs and pacing ends at half of it: epoch 1 draws from everything
    epoch1 = list(sampler)
    assert sorted(epoch1) == list(range(64))
    sampler.set_epoch(0)
    assert list(sampler) != epoch1


def test_the_order_is_a_function_of_seed_and_epoch_so_a_resume_continues_at_the_same_batch():
    """The loop resumes by skipping the batches its LoopState says it trained: the rest must be the same rows."""
    from torch.utils.data import DataLoader

    def loader():
        sampler = _sampler(rank=1, pacing="root")
        sampler.set_epoch(0)
        return DataLoader(list(range(64)), batch_size=4, sampler=sampler)

    uninterrupted = [b.tolist() for b in loader()]
    trained = 3  # LoopState.batch in the checkpoint
    resumed = [b.tolist() for i, b in enumerate(loader()) if i >= trained]
    assert resumed == uninterrupted[trained:]


def test_difficulty_by_length_column_and_loss(tiny_bert):
    columns = {"input_ids": [[2, 5, 3], [2, 3], [2, 5, 6, 7, 3]], "labels": [0, 1, 0], "difficulty": [0.5, 2.0, 1.0]}
    assert difficulty(CurriculumConfig(by="length"), columns).tolist() == [3, 2, 5]
    assert difficulty(CurriculumConfig(by="column", column="d"), columns).tolist() == [0.5, 2.0, 1.0]
    from transformers import AutoModelForSequenceClassification

    from rayft.data.collate import pad_batch

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    losses = difficulty(CurriculumConfig(by="loss"), columns, lambda: loss_difficulty(model, columns, pad_batch, 0))
    with torch.no_grad():
        alone = model.eval()(input_ids=torch.tensor([[2, 3]]), labels=torch.tensor([1])).loss.item()
    assert losses.shape == (3,) and losses[1] == pytest.approx(alone, rel=1e-5)


def test_a_curriculum_column_carried_through_tokenizing(tiny_bert, tmp_path):
    from rayft.data import prepare_data

    path = tmp_path / "graded.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "sentiment", "grade"])
        writer.writerows([["great film" if i % 2 else "dull film", "pos" if i % 2 else "neg", i] for i in range(120)])
    cfg = build_config(cls_config(tiny_bert, path, tmp_path, train={"curriculum": {"by": "column", "column": "grade"}}))
    data = prepare_data(cfg)
    train = data.splits["train"]
    assert len(train["difficulty"]) == len(train["input_ids"]) and set(train["difficulty"]) <= set(map(float, range(120)))


def test_a_missing_curriculum_column_is_refused_before_training(tiny_bert, sentiment_csv, tmp_path):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, train={"curriculum": {"by": "column", "column": "nope"}})
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    errors = {e.path: str(e) for e in info.value.errors}
    assert "review" in errors["train.curriculum.column"] and "'nope'" in errors["train.curriculum.column"]
    with pytest.raises(ConfigError, match="curriculum.column is required"):
        build_config(cls_config(tiny_bert, sentiment_csv, tmp_path, train={"curriculum": {"by": "column"}}))
