"""A real Tune + Optuna + ASHA sweep whose trials are Ray Train + DeepSpeed runs, then export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from rayft.cli import main
from rayft.store import MANIFEST
from rayft.sweep.warm import idle_warm
from tests.support import cls_config
from tests.support.sweep_driver import kill_when, resume, sweep_command, trial_results

pytestmark = pytest.mark.integration


def test_three_trial_asha_sweep_exports_the_best(ray_local, tiny_bert, sentiment_csv, tmp_path, capsys):
    import yaml

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="tiny-sweep",
                     train={"max_steps": 12, "eval_every": 3, "batch_size": 8},
                     tracking={"wandb": True, "mode": "offline", "project": "rayft-tests"},
                     sweep={"num_trials": 3, "scheduler": "asha", "grace_period": 1, "reduction_factor": 2,
                            "space": {"train.lr": {"loguniform": [1e-3, 2e-2]}, "method.r": {"choice": [2, 4]},
                                      "train.scheduler": {"choice": ["linear", "cosine"]}}})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw))
    before = set(_actors())
    assert main(["sweep", str(config), "--id", "tiny-best"]) == 0
    out = capsys.readouterr().out
    assert "trials (max eval_accuracy)" in out and "best trial" in out

    # The trials shared one hub: no report-queue actor or placement-group cleaner per trial, and every
    # placement group (those of trials ASHA stopped included) was freed.
    started = [cls for actor_id, cls in _actors().items() if actor_id not in before]
    assert started.count("TrialHub") == 1
    assert "PlacementGroupCleaner" not in started, started
    assert started.count("_QueueActor") == started.count("WandbLoggingActor") == 3, started  # W&B's, not Tune's
    assert started.count("RayTrainWorker") == 3
    _wait_for_all_cpus()

    summary = json.loads(next((tmp_path / "runs" / "tiny-sweep").glob("sweep-*/rayft_sweep.json")).read_text())
    trials = summary["trials"]
    assert len(trials) == 3 and summary["best"] in {t["trial_id"] for t in trials}
    assert len({(t["params"]["train.lr"], t["params"]["method.r"]) for t in trials}) == 3  # Optuna proposed 3 configs
    assert all(t["status"] in {"DONE", "STOPPED"} for t in trials)
    # The third trial's worker started in a process Ray prestarted while the first two trained, and no idle
    # prestarted process is left once the sweep is over.
    assert sorted(t["metrics"].get("startup_prestarted", 0.0) for t in trials) == [0.0, 0.0, 1.0], trials
    assert not idle_warm(f"tiny-sweep/{summary['name']}")
    best = next(t for t in trials if t["trial_id"] == summary["best"])
    assert best["metrics"]["eval_accuracy"] == max(t["metrics"]["eval_accuracy"] for t in trials
                                                   if t["status"] == "DONE")

    # W&B: one offline run per trial, grouped by the sweep.
    runs = list((Path(next((tmp_path / "runs" / "tiny-sweep").glob("sweep-*"))) / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 3

    # The best trial is in the store with its manifest, and plain peft loads it.
    folder = tmp_path / "store" / "tiny-best"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["trial_id"] == summary["best"] and manifest["sweep_id"] == summary["name"]
    assert manifest["method"] == "lora" and manifest["labels"] == ["neg", "pos"]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    model = PeftModel.from_pretrained(base, folder)
    assert model.peft_config["default"].r == best["params"]["method.r"]


def _actors() -> dict[str, str]:
    """Every actor this Ray has seen: id -> class name."""
    import ray

    return {actor_id: a["ActorClassName"] for actor_id, a in ray._private.state.actors().items()}


def _wait_for_all_cpus(timeout_s: float = 20.0) -> None:
    import time

    import ray
    from ray.util.placement_group import placement_group_table

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]
        if not left and ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU"):
            return
        time.sleep(0.5)
    raise AssertionError(f"placement groups left: {left}; CPUs {ray.available_resources().get('CPU')} of "
                         f"{ray.cluster_resources().get('CPU')} free")


def test_deferred_asha_pauses_the_first_trial_at_a_rung_until_it_has_a_peer(ray_local, tiny_bert, sentiment_csv,
                                                                            tmp_path):
    """``asha_promotion: deferred``: the first trial to reach a rung waits (paused, its checkpoint kept) until another
    result is there to compare; a promoted trial resumes from its own checkpoint; stopped ones, waiting or not,
    reach Optuna with their result at the rung."""
    import optuna

    config = _deferred_sweep(tiny_bert, sentiment_csv, tmp_path, "deferred-asha", steps=8, trials=4, eta=2, seed=1)
    assert main(["sweep", str(config), "--no-export"]) == 0
    sweep = next((tmp_path / "runs" / "deferred-asha").glob("sweep-*"))
    summary = json.loads((sweep / "rayft_sweep.json").read_text())
    statuses = [t["status"] for t in summary["trials"]]
    assert len(statuses) == 4 and set(statuses) <= {"DONE", "STOPPED"} and "DONE" in statuses, statuses

    rows = {t["trial_id"]: trial_results(sweep, t["trial_id"]) for t in summary["trials"]}
    trace = {tid: [(r["training_iteration"], r["timestamp"], r.get("resumed_from_trial")) for r in rs]
             for tid, rs in rows.items()}
    reached = {tid: next(r["timestamp"] for r in rs if r["training_iteration"] == 1) for tid, rs in rows.items()}
    went_on = {tid: next((r for r in rs if r["training_iteration"] == 2), None) for tid, rs in rows.items()}
    waited = [tid for tid, r in went_on.items() if r and r.get("resumed_from_trial") == tid]
    for tid, r in went_on.items():
        if r and tid not in waited:  # decided on arrival: another trial had reached the rung by then
            assert any(other != tid and stamp <= reached[tid] for other, stamp in reached.items()), trace
    first = min(reached, key=reached.get)
    if sorted(reached.values())[:2] != [reached[first]] * 2:  # strictly first at the rung (timestamps are seconds)
        assert went_on[first] is None or first in waited, trace
    # Promoted after waiting: it resumed from its own checkpoint at the rung, not from step 0.
    for tid in waited:
        before = next(r for r in rows[tid] if r["training_iteration"] == 1)
        assert went_on[tid]["resumed_from_step"] == before["step"] > 0, trace
    study = optuna.load_study(study_name=summary["name"], storage=summary["storage"])
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4, states  # none PRUNED for want of a result


@pytest.mark.slow
def test_killed_deferred_asha_driver_resumes_the_waiting_trials(tiny_bert, sentiment_csv, tmp_path):
    """SIGKILL the driver while a trial waits at a rung; ``--resume`` restores it from its checkpoint there, the
    sweep runs to the end, and Optuna holds every trial once, each with a result."""
    import optuna

    config = _deferred_sweep(tiny_bert, sentiment_csv, tmp_path, "deferred-resume", steps=12, trials=6, eta=3, seed=2)
    cmd, env = sweep_command(config, "--no-export")
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"  # Tune saves the sweep's state every second, so a pause is on disk
    root = tmp_path / "runs" / "deferred-resume"
    paused: set[str] = set()

    def ready() -> bool:
        for state in root.glob("sweep-*/experiment_state-*.json"):
            try:
                trials = [json.loads(t[0]) for t in json.loads(state.read_text())["trial_data"]]
            except (ValueError, KeyError, IndexError):
                continue  # being written
            paused.update(t["trial_id"] for t in trials if t.get("status") == "PAUSED")
        return bool(paused)

    assert kill_when(cmd, env, tmp_path, ready) and paused, "no trial waited at a rung while the driver lived"
    sweep = next(root.glob("sweep-*"))
    killed_at = {tid: trial_results(sweep, tid)[-1]["step"] for tid in paused}

    resume(cmd, env, tmp_path)
    summary = json.loads((sweep / "rayft_sweep.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 6 and {t["status"] for t in trials} <= {"DONE", "STOPPED"}, trials
    assert len({t["params"]["train.lr"] for t in trials}) == 6  # no configuration twice
    for tid, step in killed_at.items():  # went on from the checkpoint it waited with, not from step 0
        after = [r for r in trial_results(sweep, tid) if r.get("resumed_from_step")]
        assert after and after[0]["resumed_from_step"] == step and after[0]["step"] == step + 2, (tid, after)
    study = optuna.load_study(study_name=summary["name"], storage=summary["storage"])
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 6


def _deferred_sweep(tiny_bert, sentiment_csv, tmp_path: Path, name: str, *, steps: int, trials: int, eta: int,
                    seed: int) -> Path:
    """A tiny-BERT sweep over the learning rate under deferred ASHA (an evaluation every 2 steps, first rung at 1)."""
    import yaml

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name=name,
                     train={"max_steps": steps, "eval_every": 2, "batch_size": 8},
                     sweep={"num_trials": trials, "scheduler": "asha", "asha_promotion": "deferred", "grace_period": 1,
                            "reduction_factor": eta, "metric": "eval_loss", "mode": "min", "seed": seed,
                            "space": {"train.lr": {"loguniform": [1e-4, 3e-2]}}})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config
