"""Population based training: its config and validation, the mutations built from the space, the seeded
scheduler, and continuing a cloned optimizer state under a new learning rate and schedule."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from rayft.config import build_config
from rayft.errors import ConfigError, RayftError
from rayft.sweep.pbt import KeepInBounds, hyperparam_mutations, make_pbt, mutable_keys
from rayft.sweep.space import apply_sample
from tests.support import cls_config

SPACE = {"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.scheduler": {"choice": ["linear", "cosine", "constant"]},
         "train.warmup_ratio": {"uniform": [0.0, 0.2]}, "method.r": {"choice": [2, 4]}}


def _pbt(tiny_bert, sentiment_csv, tmp_path, train=None, **sweep):
    settings = {"searcher": "random", "scheduler": "pbt", "num_trials": 4, "space": SPACE, **sweep}
    return cls_config(tiny_bert, sentiment_csv, tmp_path, sweep=settings, train=train or {})


def test_mutations_come_from_the_mutable_part_of_the_space(tiny_bert, sentiment_csv, tmp_path):
    from ray.tune.search.sample import Domain

    cfg = build_config(_pbt(tiny_bert, sentiment_csv, tmp_path, pbt={"perturbation_interval": 3}))
    assert cfg.sweep.pbt.perturbation_interval == 3 and cfg.sweep.pbt.quantile_fraction == 0.25
    assert mutable_keys(cfg) == ["train.lr", "train.scheduler", "train.warmup_ratio"]  # method.r changes the model
    mutations = hyperparam_mutations(cfg)
    assert set(mutations) == {"train"}
    assert mutations["train"]["scheduler"] == ["linear", "cosine", "constant"]  # explore moves to a neighbour
    lr = mutations["train"]["lr"]
    assert isinstance(lr, Domain) and (lr.lower, lr.upper) == (1e-4, 1e-2)

    only_lr = build_config(_pbt(tiny_bert, sentiment_csv, tmp_path, pbt={"mutate": ["train.lr"]}))
    assert list(hyperparam_mutations(only_lr)["train"]) == ["lr"]


def test_validation_rejects_what_pbt_cannot_do_all_at_once(tiny_bert, sentiment_csv, tmp_path):
    raw = _pbt(tiny_bert, sentiment_csv, tmp_path, train={"checkpoint_every": 2}, searcher="optuna", num_trials=1,
               space={"method.name": {"choice": ["lora", "full"]}, "train.batch_size": {"choice": [8, 16]}},
               methods={"lora": {"r": {"choice": [2, 4]}}, "full": {}},
               pbt={"mutate": ["train.batch_size", "train.lr"], "quantile_fraction": 0.7})
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    by_path = {e.path: e for e in info.value.errors}
    assert {"sweep.searcher", "sweep.space.method.name", "sweep.methods", "sweep.num_trials",
            "train.checkpoint_every", "sweep.pbt.mutate.0", "sweep.pbt.mutate.1",
            "sweep.pbt.quantile_fraction"} <= set(by_path)
    assert "random with scheduler: pbt" in by_path["sweep.searcher"].expected
    assert by_path["sweep.pbt.mutate.0"].value == "train.batch_size"
    assert "train.lr" in by_path["sweep.pbt.mutate.0"].expected  # names what is mutable
    assert "a key of sweep.space" in by_path["sweep.pbt.mutate.1"].expected  # train.lr is not searched here
    text = str(info.value)
    assert "sweep.checkpoint_every" not in text and "train.checkpoint_every: 1 (or unset)" in text


def test_validation_wants_something_mutable_and_a_flat_grid_free_space(tiny_bert, sentiment_csv, tmp_path):
    raw = _pbt(tiny_bert, sentiment_csv, tmp_path, space={"method.r": {"choice": [2, 4]}})
    with pytest.raises(ConfigError, match=r"sweep.space: with scheduler: pbt, at least one parameter PBT can change "
                                          r"mid-training: one of train.lr"):
        build_config(raw)
    with pytest.raises(ConfigError, match="sweep.searcher: random with scheduler: pbt"):
        build_config(_pbt(tiny_bert, sentiment_csv, tmp_path, searcher="grid",
                          space={"train.scheduler": {"choice": ["linear", "cosine"]}}))
    # Without pbt none of this applies.
    build_config(cls_config(tiny_bert, sentiment_csv, tmp_path, sweep={"space": {"method.r": {"choice": [2, 4]}},
                                                                      "pbt": {"perturbation_interval": 1}}))


def test_mutated_values_stay_in_the_space_and_make_valid_configs(tiny_bert, sentiment_csv, tmp_path):
    cfg = build_config(_pbt(tiny_bert, sentiment_csv, tmp_path))
    keep = KeepInBounds({k: cfg.sweep.space[k] for k in mutable_keys(cfg)})
    clipped = keep({"train": {"lr": 0.012, "warmup_ratio": -0.01, "scheduler": "cosine"}, "method": {"r": 4}})
    assert clipped == {"train": {"lr": 1e-2, "warmup_ratio": 0.0, "scheduler": "cosine"}, "method": {"r": 4}}
    trial = apply_sample(cfg.model_dump(mode="json"), clipped)
    assert (trial.train.lr, trial.train.scheduler, trial.method_params()["r"]) == (1e-2, "cosine", 4)


def _explorations(scheduler, n: int) -> list[dict]:
    donor = SimpleNamespace(config={"train": {"lr": 1e-3, "scheduler": "cosine", "warmup_ratio": 0.1},
                                    "method": {"r": 4}})
    return [scheduler._seeded(scheduler._get_new_config, None, donor)[0] for _ in range(n)]


def test_seeded_scheduler_repeats_its_mutations_and_leaves_global_random_alone(tiny_bert, sentiment_csv, tmp_path):
    cfg = build_config(_pbt(tiny_bert, sentiment_csv, tmp_path, pbt={"resample_probability": 0.5}))
    outer = random.getstate()
    first = _explorations(make_pbt(cfg, "eval_accuracy", "max", max_t=10), 12)
    again = _explorations(make_pbt(cfg, "eval_accuracy", "max", max_t=10), 12)
    assert random.getstate() == outer
    assert first == again
    assert len({round(c["train"]["lr"], 12) for c in first}) > 1
    assert all(1e-4 <= c["train"]["lr"] <= 1e-2 and 0.0 <= c["train"]["warmup_ratio"] <= 0.2 for c in first)
    assert all(c["method"] == {"r": 4} for c in first)  # not mutable: inherited from the donor as is
    other = build_config(_pbt(tiny_bert, sentiment_csv, tmp_path, seed=1, pbt={"resample_probability": 0.5}))
    assert _explorations(make_pbt(other, "eval_accuracy", "max", max_t=10), 12) != first


def test_pbt_needs_evaluations_to_act_on(tiny_bert, sentiment_csv, tmp_path):
    cfg = build_config(_pbt(tiny_bert, sentiment_csv, tmp_path, pbt={"perturbation_interval": 2, "burn_in": 3}))
    make_pbt(cfg, "eval_accuracy", "max", max_t=4)
    with pytest.raises(RayftError, match=r"sweep.pbt.perturbation_interval: a trial makes 3 evaluation\(s\)"):
        make_pbt(cfg, "eval_accuracy", "max", max_t=3)


def test_pbt_draws_its_population_with_a_seeded_basic_variant_generator(tiny_bert, sentiment_csv, tmp_path):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from rayft.sweep.search import make_searcher

    cfg = build_config(_pbt(tiny_bert, sentiment_csv, tmp_path))
    searcher, trials, space = make_searcher(cfg, tmp_path / "sweep", "sweep-x")
    assert isinstance(searcher, BasicVariantGenerator) and trials == 4
    assert set(space) == {"train", "method"} and set(space["train"]) == {"lr", "scheduler", "warmup_ratio"}
    assert not (tmp_path / "sweep").exists()  # no Optuna study: PBT searches by mutation


def test_a_cloned_optimizer_continues_under_the_new_lr_and_schedule():
    from transformers import get_scheduler

    from rayft.train.engine import continue_schedule, optimizer_settings

    def engine(lr: float, kind: str, warmup: int):
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW([{"params": model.parameters(), "lr": lr, "weight_decay": 0.01}], lr=lr)
        sched = get_scheduler(kind, opt, num_warmup_steps=warmup, num_training_steps=20)
        return SimpleNamespace(module=model, optimizer=opt, lr_scheduler=sched, global_steps=0)

    donor = engine(1e-3, "linear", 0)
    for _ in range(8):  # a few real steps: the moments and the step count are what the clone inherits
        donor.module(torch.randn(4, 3)).sum().backward()
        donor.optimizer.step()
        donor.lr_scheduler.step()
        donor.global_steps += 1
    clone = engine(5e-3, "cosine", 4)
    settings = optimizer_settings(clone)
    clone.optimizer.load_state_dict(donor.optimizer.state_dict())  # what loading the donor's checkpoint does
    clone.global_steps = donor.global_steps
    assert clone.optimizer.param_groups[0]["lr"] == pytest.approx(donor.optimizer.param_groups[0]["lr"])
    continue_schedule(clone, settings)
    reference = engine(5e-3, "cosine", 4)  # the new schedule, stepped to the same step from scratch
    for _ in range(8):
        reference.optimizer.step()
        reference.lr_scheduler.step()
    assert clone.optimizer.param_groups[0]["lr"] == pytest.approx(reference.optimizer.param_groups[0]["lr"])
    assert clone.optimizer.param_groups[0]["initial_lr"] == 5e-3
    assert clone.optimizer.state_dict()["state"][0]["step"] == 8  # Adam's state came from the donor
    clone.optimizer.step()
    clone.lr_scheduler.step()
    reference.optimizer.step()
    reference.lr_scheduler.step()
    assert clone.lr_scheduler.get_last_lr() == pytest.approx(reference.lr_scheduler.get_last_lr())
    with pytest.raises(RuntimeError, match="optimizer groups"):
        continue_schedule(clone, settings * 2)


def test_exploit_steps_are_described_from_tunes_log(tmp_path):
    from rayft.sweep.pbt import describe_exploits

    steps = [["0_lr=0.0013", "1_lr=0.0022", 1, 2, {"train": {"lr": 0.0022, "scheduler": "linear"}},
              {"train": {"lr": 0.00264, "scheduler": "cosine"}}],
             ["1_lr=0.0022", "0_lr=0.0013@perturbed[train=lr_0.00264]", 4, 3, {"train": {"lr": 0.00264}},
              {"train": {"lr": 0.00264}}]]
    (tmp_path / "pbt_global.txt").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (tmp_path / "pbt_policy_ab12c_00000.txt").write_text("")
    text = describe_exploits(tmp_path)
    assert text.splitlines() == [
        f"PBT: 2 exploit steps (log: {tmp_path / 'pbt_global.txt'})",
        "  ab12c_00000 cloned ab12c_00001 (at its evaluation 2): train.lr 0.0022 -> 0.00264, "
        "train.scheduler linear -> cosine",
        "  ab12c_00001 cloned ab12c_00000 (at its evaluation 3): no change"]
    assert describe_exploits(tmp_path / "none").startswith("PBT: 0 exploit steps")
