"""The command line: overrides anywhere on the line, registry misses as user errors, and export selection
(the store's choice of what to export from a sweep or a run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.cli import main, parse_args
from rayft.errors import RayftError
from tests.support import cls_config
from tests.support.serve_helpers import LABELS, cls_adapter, config


def test_overrides_stand_anywhere_after_the_config():
    args = parse_args(["submit", "exp.yaml", "--address", "http://h:8265", "train.lr=3e-4", "--wait",
                       "sweep.num_trials=2"])
    assert (args.config, args.address, args.wait) == ("exp.yaml", "http://h:8265", True)
    assert args.overrides == ["train.lr=3e-4", "sweep.num_trials=2"]
    args = parse_args(["sweep", "exp.yaml", "a.b=1", "--no-export", "c=[x, y]"])
    assert args.overrides == ["a.b=1", "c=[x, y]"] and args.no_export
    assert parse_args(["validate", "exp.yaml"]).overrides == []
    args = parse_args(["train", "train.lr=1e-3", "exp.yaml", "--resume", "train.epochs=2"])  # before the config too
    assert (args.config, args.overrides, args.resume) == ("exp.yaml", ["train.lr=1e-3", "train.epochs=2"], True)
    assert parse_args(["validate", "runs/a=b.yaml"]).config == "runs/a=b.yaml"  # a lone argument is the config


def test_submit_takes_overrides_after_its_options(tiny_bert, sentiment_csv, tmp_path, monkeypatch):
    import yaml

    from rayft import jobs

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(cls_config(tiny_bert, sentiment_csv, tmp_path)))
    sent: list = []
    monkeypatch.setattr(jobs, "submit", lambda address, sub, token=None: sent.append(sub) or "raysubmit_1")
    assert main(["submit", str(config), "--address", "http://127.0.0.1:1", "train.epochs=3", "--working-dir",
                 str(tmp_path), "--run", "validate", "sweep.num_trials=2"]) == 0
    assert [s.entrypoint for s in sent] == ["python -m rayft.cli validate exp.yaml train.epochs=3 sweep.num_trials=2"]


@pytest.mark.parametrize("argv, message", [
    (["submit", "exp.yaml", "--address", "http://h:8265", "train.lr"], "'train.lr' is neither an option of "
                                                                      "`rayft submit` nor an override"),
    (["validate", "exp.yaml", "=3"], "overrides are key.path=value"),
    (["train", "exp.yaml", "--bogus"], "unrecognized arguments: --bogus"),
    (["models", "extra=1"], "unrecognized arguments: extra=1"),  # no config, so no overrides
])
def test_a_stray_argument_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: rayft" in err


def test_a_registry_miss_is_a_rayft_error_with_the_valid_names(monkeypatch, capsys):
    from rayft import cli
    from rayft.registry import Registry, UnknownNameError

    registry = Registry("method")
    registry.register("lora", object())
    with pytest.raises(UnknownNameError) as info:
        registry.get("lorax")
    assert isinstance(info.value, RayftError) and isinstance(info.value, KeyError)
    assert str(info.value) == "unknown method 'lorax'; expected one of: lora"
    monkeypatch.setattr(cli, "cmd_models", lambda args: registry.get("lorax"))
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "error: unknown method 'lorax'; expected one of: lora\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_bert, sentiment_csv) -> Path:
    """A finished sweep of three trials with checkpoints (t1 best, t0 next, t2 stopped) and one without."""
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = config(cls_config(tiny_bert, sentiment_csv, tmp, name="sw"))
    adapter = cls_adapter(tiny_bert, tmp / "adapter", seed=0)
    trials = []
    for i, (acc, final) in enumerate([(0.7, True), (0.8, True), (0.9, False), (0.95, True)]):
        ckpt = tmp / f"ckpt{i}"
        if i != 3:  # the last trial left no checkpoint
            (ckpt / "model").mkdir(parents=True)
            for f in adapter.iterdir():
                (ckpt / "model" / f.name).write_bytes(f.read_bytes())
            (ckpt / "rayft_state.json").write_text(json.dumps({"config": cfg, "labels": LABELS}))
        trials.append({"trial_id": f"t{i}", "status": "DONE", "params": {}, "checkpoint_path": str(ckpt) if i != 3
                       else None, "metrics": {"eval_accuracy": acc, "final": final}, "evaluations": 1})
    folder = tmp / "sweep-1"
    folder.mkdir()
    (folder / "rayft_sweep.json").write_text(json.dumps({
        "name": "sweep-1", "metric": "eval_accuracy", "mode": "max", "best": "t1", "config": cfg, "trials": trials}))
    return folder


def test_export_takes_the_best_trial_a_chosen_one_or_the_top_k(sweep, tmp_path, capsys):
    from rayft.store import AdapterStore

    store = tmp_path / "store"
    assert main(["export", str(sweep), "--store", str(store), "--id", "best"]) == 0
    assert "exported 'best' (adapter, lora, sequence_classification)" in capsys.readouterr().out
    assert AdapterStore(store).manifest("best").trial_id == "t1"
    assert main(["export", str(sweep), "--store", str(store), "--trial", "t2", "--id", "chosen"]) == 0
    assert AdapterStore(store).manifest("chosen").trial_id == "t2" and "exported 'chosen'" in capsys.readouterr().out
    assert main(["export", str(sweep), "--store", str(tmp_path / "top"), "--top-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("'")[1] for line in out] == ["sw-t1", "sw-t0"]  # best first; stopped trials after finished
    assert "trial t1" in out[0]
    assert main(["export", str(sweep), "--store", str(tmp_path / "all"), "--all"]) == 0
    assert [line.split("'")[1] for line in capsys.readouterr().out.splitlines()] == ["sw-t1", "sw-t0", "sw-t2"]
    assert sorted(m.trial_id for m in AdapterStore(tmp_path / "all").list()) == ["t0", "t1", "t2"]


def test_export_selection_errors_name_what_exists(sweep, tmp_path):
    from rayft.store import AdapterStore, export_one, export_trials, sweep_summary

    store = AdapterStore(tmp_path / "store")
    with pytest.raises(RayftError, match="--trial 't3': no checkpoint in sweep .*trials: t0, t1, t2, t3"):
        export_one(str(sweep), store, trial="t3")
    with pytest.raises(RayftError, match="--top-k must be at least 1"):
        export_trials(str(sweep), store, top_k=-1)
    assert sweep_summary(str(tmp_path)) is None
    with pytest.raises(RayftError, match="not a sweep folder .* a run folder or a checkpoint"):
        export_one(str(tmp_path), store)
    ckpt = sweep.parent / "ckpt0"
    assert export_one(str(ckpt), store, adapter_id="direct").adapter_id == "direct"  # a checkpoint folder itself


def test_a_store_location_is_resolved_once_local_or_remote(tmp_path):
    from rayft.store import AdapterStore

    assert AdapterStore(f"file://{tmp_path}/s").root == tmp_path / "s"
    assert AdapterStore(tmp_path / "s").remote is None
    remote = AdapterStore("s3://bucket/store?endpoint_override=127.0.0.1:9&scheme=http")
    assert remote.remote is not None and remote.root.startswith("s3://bucket/store")


def test_locations_not_forks_on_path_or_uri(tmp_path):
    from rayft.storage import is_relative_path
    from rayft.sweep.results import read_summary

    assert is_relative_path("runs") and is_relative_path("./store")
    assert not is_relative_path(str(tmp_path)) and not is_relative_path("s3://bucket/runs")
    assert not is_relative_path(f"file://{tmp_path}")
    with pytest.raises(RayftError, match=r"not a finished sweep folder \(no rayft_sweep.json\); pass runs/"):
        read_summary(tmp_path)
