"""Population based training for real: two trials (Ray Train + DeepSpeed on the tiny BERT), a weaker one clones
the stronger one's checkpoint and continues from its step under a mutated learning rate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from rayft.cli import main
from tests.support import cls_config
from tests.support.sweep_driver import kill_when, resume, sweep_command, trial_results

pytestmark = pytest.mark.integration


def test_pbt_clones_a_checkpoint_and_continues_with_a_new_lr(ray_local, tiny_bert, sentiment_csv, tmp_path, capsys):
    from rayft.track.wandb_files import offline_runs

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="pbt-sweep",
                     train={"max_steps": 10, "eval_every": 2, "batch_size": 8, "scheduler": "constant"},
                     tracking={"wandb": True, "mode": "offline", "project": "rayft-tests"},
                     sweep={"num_trials": 2, "searcher": "random", "scheduler": "pbt", "seed": 3,
                            "space": {"train.lr": {"loguniform": [1e-3, 3e-2]}},
                            "pbt": {"perturbation_interval": 1, "resample_probability": 0.0}})
    config = tmp_path / "pbt.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(config), "--no-export"]) == 0
    out = capsys.readouterr().out
    assert "PBT: " in out and " cloned " in out  # what PBT did, in the terminal

    sweep = next((tmp_path / "runs" / "pbt-sweep").glob("sweep-*"))
    summary = json.loads((sweep / "rayft_sweep.json").read_text())
    ids = {t["trial_id"] for t in summary["trials"]}
    assert len(ids) == 2 and all(t["status"] == "DONE" for t in summary["trials"])

    # Tune's PBT log: at least one exploit, [target tag, donor tag, target iter, donor iter, donor cfg, new cfg].
    exploits = [json.loads(line) for line in (sweep / "pbt_global.txt").read_text().splitlines()]
    assert exploits
    policies = {p.name[len("pbt_policy_"):-len(".txt")] for p in sweep.glob("pbt_policy_*.txt")}
    assert policies and policies <= ids
    target = sorted(policies)[0]
    (donor,) = ids - {target}

    rows, donor_rows = trial_results(sweep, target), trial_results(sweep, donor)
    cloned = [r for r in rows if r.get("resumed_from_trial") == donor]
    assert cloned, [(r["training_iteration"], r["resumed_from_trial"]) for r in rows]
    first = cloned[0]
    # It continued from the donor's checkpoint: the donor's step at the iteration it cloned, not from 0.
    at_clone = next(r for r in donor_rows if r["training_iteration"] == first["training_iteration"] - 1)
    assert first["resumed_from_step"] == at_clone["step"] > 0
    assert first["step"] == first["resumed_from_step"] + 2  # one evaluation interval further
    # Under its own, mutated learning rate (a constant schedule: the lr it trains with is the config's).
    donor_lr, new_lr = at_clone["config"]["train"]["lr"], first["config"]["train"]["lr"]
    assert new_lr != pytest.approx(donor_lr)
    assert first["lr"] == pytest.approx(new_lr)
    assert any(e[4]["train"]["lr"] == pytest.approx(donor_lr) and e[5]["train"]["lr"] == pytest.approx(new_lr)
               for e in exploits)
    assert all(r["step"] <= 10 for r in rows) and rows[-1]["final"] is True
    for trial_id in ids:  # the population fits the cluster: no trial was paused and restarted from its own checkpoint
        with open(next(sweep.glob(f"*{trial_id}*/progress.csv")), newline="") as fh:
            assert all(r["resumed_from_trial"] != trial_id for r in csv.DictReader(fh))
    exploited = next(t for t in summary["trials"] if t["trial_id"] == target)
    assert exploited["params"]["train.lr"] == pytest.approx(rows[-1]["config"]["train"]["lr"])  # its final config

    # W&B: one offline run per trial, exploited or not, that followed the trial across its clone (whether the
    # last run to finish got its exit record flushed is up to W&B's teardown, not PBT: not checked here).
    runs = {r.run_id: r for r in offline_runs(sweep / "wandb")}
    assert set(runs) == ids and all(r.group == summary["name"] and r.history for r in runs.values())
    assert [h["lr"] for h in runs[target].history][-1] == pytest.approx(rows[-1]["lr"])
    # Every trial exports from its latest Train run.
    assert main(["export", str(sweep), "--all", "--store", str(tmp_path / "store")]) == 0
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == sorted(f"pbt-sweep-{i}" for i in ids)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_workers_continue_a_cloned_checkpoint_under_their_own_lr(stage, ray_local, tiny_bert, sentiment_csv,
                                                                    tmp_path):
    """The clone path on its own, with ZeRO-partitioned optimizer state: a run started from another run's
    checkpoint continues its step count and history but trains with its own learning rate and schedule."""
    import ray
    from ray.train import Checkpoint

    from rayft.config import build_config
    from rayft.data import prepare_data
    from rayft.train.run import make_trainer, run_training, storage_location

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name=f"clone{stage}",
                     train={"max_steps": 4, "eval_every": 4, "batch_size": 8, "lr": 2e-3, "scheduler": "linear"},
                     scaling={"num_workers": 2, "cpus_per_worker": 1, "zero_stage": stage})
    donor = run_training(build_config(raw), verbose=False)
    assert donor.metrics["step"] == 4 and donor.metrics["lr"] == pytest.approx(0.0)  # linear decay to the end

    cfg = build_config({**raw, "train": {**raw["train"], "max_steps": 8, "lr": 5e-3, "warmup_ratio": 0.25,
                                         "scheduler": "constant_with_warmup"}})
    trainer = make_trainer(cfg, ray.put(prepare_data(cfg)), run_name="clone", storage_path=storage_location(cfg).path,
                           label="clone", start_checkpoint=Checkpoint(donor.checkpoint_path))
    result = trainer.fit()
    metrics = result.metrics
    assert (metrics["resumed_from_step"], metrics["resumed_from_trial"], metrics["step"]) == (4, "train", 8)
    assert metrics["lr"] == pytest.approx(5e-3)  # neither the donor's base lr (2e-3) nor its schedule (0 by now)
    state = json.loads((Path(result.checkpoint.path) / "rayft_state.json").read_text())
    assert [h["step"] for h in state["history"]] == [4, 8] and state["trial"] == "clone"


@pytest.mark.slow
def test_killed_pbt_driver_resumes_every_trial_from_a_checkpoint(tiny_bert, sentiment_csv, tmp_path):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="pbt-resume",
                     train={"max_steps": 24, "eval_every": 2, "batch_size": 8},
                     sweep={"num_trials": 2, "searcher": "random", "scheduler": "pbt", "seed": 0,
                            "space": {"train.lr": {"loguniform": [1e-3, 3e-2]}},
                            "pbt": {"perturbation_interval": 1}})
    config = tmp_path / "pbt.yaml"
    config.write_text(yaml.safe_dump(raw))
    cmd, env = sweep_command(config, "--no-export")
    root = tmp_path / "runs" / "pbt-resume"
    kill_when(cmd, env, tmp_path, lambda: bool(list(root.glob("sweep-*/pbt_global.txt"))))  # after an exploit
    sweep = next(root.glob("sweep-*"))
    before = {p.name for p in (sweep / "trials").iterdir()}

    resume(cmd, env, tmp_path)
    summary = json.loads((sweep / "rayft_sweep.json").read_text())
    assert len(summary["trials"]) == 2
    assert all(t["status"] == "DONE" and t["metrics"]["step"] == 24 for t in summary["trials"])
    started = {p.name for p in (sweep / "trials").iterdir()} - before
    for t in summary["trials"]:  # each went on in a new Train run, from a checkpoint Tune held, not from 0
        assert any(name.startswith(t["trial_id"] + "-") for name in started), (t["trial_id"], started)
        after = [r for r in trial_results(sweep, t["trial_id"]) if Path(r["checkpoint_path"]).parent.name in started]
        assert after and after[0]["resumed_from_step"] > 0
        assert after[0]["step"] == after[0]["resumed_from_step"] + 2


@pytest.mark.slow
def test_a_population_larger_than_the_cluster_takes_turns(ray_local, tiny_bert, sentiment_csv, tmp_path):
    from rayft.config import build_config
    from rayft.sweep import run_sweep

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="pbt-turns",
                     train={"max_steps": 8, "eval_every": 2, "batch_size": 8},
                     sweep={"num_trials": 3, "searcher": "random", "scheduler": "pbt", "seed": 1,
                            "space": {"train.lr": {"loguniform": [1e-3, 3e-2]},
                                      "train.scheduler": {"choice": ["linear", "cosine", "constant"]}},
                            "pbt": {"perturbation_interval": 1}})
    out = run_sweep(build_config(raw), verbose=0)  # 2 CPUs: two trials run at once, the third waits its turn
    assert len(out.trials) == 3 and all(t.status == "DONE" and t.metrics["step"] == 8 for t in out.trials)
    sweep = Path(out.path)
    restarts = []
    for t in out.trials:
        with open(next(sweep.glob(f"*{t.trial_id}*/progress.csv")), newline="") as fh:
            restarts += [r for r in csv.DictReader(fh) if r["resumed_from_trial"]]
    assert restarts and all(int(r["resumed_from_step"]) > 0 for r in restarts)  # paused or cloned, never from 0
