"""An online RL experiment swept like any other: Optuna proposes PPO's KL coefficient, clip range and learning
rate, ASHA compares the trials on the held-out reward, and the best policy lands in the store as an sft-served
result."""

from __future__ import annotations

import json

import pytest
import yaml

from rayft.cli import main
from rayft.store import AdapterStore
from tests.support import cls_config
from tests.support import tiny_tasks as tt

pytestmark = pytest.mark.integration


def test_asha_sweeps_ppo_on_the_held_out_reward(ray_local, tiny_llama, tmp_path, capsys):
    data = tt.write_jsonl(tmp_path / "prompts.jsonl", tt.rl_prompts(48))
    raw = cls_config(tiny_llama, data, tmp_path, name="ppo-sweep",
                     task={"name": "ppo", "rewards": [{"function": "tests.support.rewards:target_word"}],
                           "max_new_tokens": 6, "ppo_epochs": 2, "num_minibatches": 2},
                     train={"max_steps": 16, "eval_every": 4, "batch_size": 8, "lr": 3e-2},
                     sweep={"num_trials": 3, "scheduler": "asha", "grace_period": 1, "reduction_factor": 2,
                            "metric": "eval_reward", "mode": "max",
                            "space": {"train.lr": {"loguniform": [1e-2, 5e-2]},
                                      "task.kl_coef": {"choice": [0.01, 0.05]},
                                      "task.clip_range": {"choice": [0.1, 0.2]}}})
    raw["data"] = {"source": str(data), "validation_size": 8, "test_size": 0}
    raw["method"] = {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(config), "--id", "ppo-best"]) == 0
    assert "best trial" in capsys.readouterr().out

    summary = json.loads(next((tmp_path / "runs" / "ppo-sweep").glob("sweep-*/rayft_sweep.json")).read_text())
    trials = summary["trials"]
    assert len(trials) == 3 and all(t["status"] in {"DONE", "STOPPED"} for t in trials)
    assert len({tuple(sorted(t["params"].items())) for t in trials}) == 3  # three different proposals
    done = [t for t in trials if t["status"] == "DONE"]
    best = next(t for t in trials if t["trial_id"] == summary["best"])
    assert best["metrics"]["eval_reward"] == max(t["metrics"]["eval_reward"] for t in done)
    assert {"train_kl", "train_value_loss", "eval_kl"} <= set(best["metrics"])
    manifest = AdapterStore(tmp_path / "store").manifest("ppo-best")
    assert manifest.task == "ppo" and manifest.trial_id == summary["best"]
