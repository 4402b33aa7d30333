"""Config: schema, overrides, and every user mistake reported at once with path, value and expectation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from rayft.cli import main
from rayft.config import apply_overrides, build_config, load_config
from rayft.errors import ConfigError
from tests.support import REPO, cls_config


def test_every_shipped_experiment_validates():
    files = sorted((REPO / "experiments").glob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        cfg = load_config(path)
        assert cfg.name and cfg.sweep.num_trials >= 1


def test_overrides_set_nested_values_with_yaml_types():
    raw = apply_overrides({"train": {"lr": 0.1}}, ["train.lr=3e-4", "scaling.zero_stage=3", "method.target_modules=[q,v]"])
    assert raw["train"]["lr"] == 3e-4 and raw["scaling"]["zero_stage"] == 3
    assert raw["method"]["target_modules"] == ["q", "v"]


def test_valid_tiny_config(tiny_bert, sentiment_csv, tmp_path):
    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path))
    assert cfg.method_params() == {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}


def test_many_mistakes_are_reported_together(tiny_bert, sentiment_csv, tmp_path):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path)
    raw["model"]["max_len"] = 64  # unknown key
    raw["train"]["lr"] = "fast"  # wrong type
    raw["scaling"]["zero_stage"] = 5  # out of range
    raw["method"] = {"name": "lorax"}  # unknown method
    raw["data"]["text_column"] = "body"  # not a column of the file
    raw["sweep"] = {"space": {"train.lrr": {"loguniform": [1e-4, 1e-3]}}}  # unknown parameter
    with pytest.raises(ConfigError) as info:
        build_config(raw, source="bad.yaml")
    by_path = {e.path: e for e in info.value.errors}
    assert set(by_path) >= {"model.max_len", "train.lr", "scaling.zero_stage", "method.name", "data.text_column",
                            "sweep.space.train.lrr"}
    assert "unknown key" in by_path["model.max_len"].expected
    assert by_path["train.lr"].value == "fast"
    assert "less than or equal to 3" in by_path["scaling.zero_stage"].expected
    assert "full" in by_path["method.name"].expected and "lora" in by_path["method.name"].expected
    assert "review" in by_path["data.text_column"].expected and "sentiment" in by_path["data.text_column"].expected
    assert "train.lr" in by_path["sweep.space.train.lrr"].expected
    message = str(info.value)
    assert "bad.yaml" in message and "6 error(s)" in message


def test_unknown_model_and_task_list_valid_names(tiny_bert, sentiment_csv, tmp_path):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path)
    raw["model"]["name"] = "bert-tiny"
    raw["task"] = {"name": "classify"}
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    by_path = {e.path: e.expected for e in info.value.errors}
    assert "minilm-l6" in by_path["model.name"] and "smollm2-135m" in by_path["model.name"]
    assert "sequence_classification" in by_path["task.name"] and "sft" in by_path["task.name"]


def test_method_parameters_are_checked_by_the_method(tiny_bert, sentiment_csv, tmp_path):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, method={"rank": 4, "r": 0})
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    by_path = {e.path: e.expected for e in info.value.errors}
    assert "r, alpha" in by_path["method.rank"]
    assert "greater than or equal to 1" in by_path["method.r"]


@pytest.mark.parametrize("content,expected", [("", "file is empty"), ("review,sentiment\n", "no rows")])
def test_missing_or_empty_data_file(tiny_bert, tmp_path, content, expected):
    data = tmp_path / "empty.csv"
    data.write_text(content)
    for source, message in [(data, expected), (tmp_path / "missing.csv", "file not found")]:
        with pytest.raises(ConfigError) as info:
            build_config(cls_config(tiny_bert, source, tmp_path))
        assert any(e.path == "data.source" and message in e.expected for e in info.value.errors)


def test_sweep_space_values_are_validated(tiny_bert, sentiment_csv, tmp_path):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path)
    raw["sweep"] = {"space": {"method.r": {"choice": [4, 0]}, "train.scheduler": {"choice": ["linear", "wavy"]},
                              "train.lr": {"loguniform": [1e-3, 1e-4]}}}
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    paths = [e.path for e in info.value.errors]
    assert "sweep.space.method.r" in paths and "sweep.space.train.scheduler" in paths
    assert any(p.startswith("sweep.space.train.lr") for p in paths)


def test_cli_exit_code_2_and_no_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"name": "nope"}, "data": {"source": str(tmp_path / "x.csv")},
                                   "train": {"epochs": -1}, "surprise": 1}))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "surprise" in err and "model.name" in err and "train.epochs" in err and "data.source" in err
    assert "Traceback" not in err


def test_cli_entry_point_runs_as_a_process(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: [unclosed\n")
    proc = subprocess.run([sys.executable, "-m", "rayft.cli", "validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "valid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_wandb_is_offline_unless_a_key_is_configured(monkeypatch, tiny_bert, sentiment_csv, tmp_path):
    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path, tracking={"wandb": True}))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert cfg.tracking.resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert cfg.tracking.resolved_mode() == "online"
    cfg.tracking.mode = "offline"
    assert cfg.tracking.resolved_mode() == "offline"


def test_config_imports_no_execution_stage():
    code = ("import sys, rayft.config.validate, rayft.config.checks; "
            "print(sorted(m for m in sys.modules if m.startswith(('rayft.train', 'rayft.sweep', 'rayft.serve'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


def test_stages_register_their_checks_with_the_validator(tiny_bert, sentiment_csv, tmp_path, monkeypatch):
    from rayft.config import checks
    from rayft.errors import FieldError

    names = [c.__name__ for c in checks.registered_checks()]  # importing rayft.sweep.checks registers the sweep's
    # (a task module imported by another test, e.g. distill, adds its own)
    assert {"check_conditional_space", "check_objectives", "_check_pbt", "check_asha_promotion", "check_startup_trials",
            "check_training", "check_continual", "check_curriculum"} <= set(names)
    monkeypatch.setattr(checks, "_CHECKS", list(checks._CHECKS))

    def no_big_batches(raw):
        size = (raw.get("train") or {}).get("batch_size")
        return [FieldError("train.batch_size", size, "at most 8 here")] if size and size > 8 else []

    assert checks.register_check(no_big_batches) is no_big_batches
    checks.register_check(no_big_batches)  # registering again (a reloaded module) keeps one copy
    assert [c.__name__ for c in checks.registered_checks()].count("no_big_batches") == 1
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, train={"batch_size": 16})
    raw["sweep"] = {"scheduler": "median", "asha_promotion": "deferred"}  # a registered sweep check fails too
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    assert [e.path for e in info.value.errors] == ["sweep.asha_promotion", "train.batch_size"]


def test_defaults_come_from_the_schema():
    from rayft.config.schema import ExperimentConfig, default

    cfg = ExperimentConfig.model_validate({"model": {"name": "m"}, "data": {"source": "s"}})
    assert default("task.name") == cfg.task.name == "sequence_classification"
    assert default("sweep.scheduler") == cfg.sweep.scheduler and default("store.path") == cfg.store.path
    assert default("sweep.pbt.perturbation_interval") == cfg.sweep.pbt.perturbation_interval
    assert default("output_dir") == cfg.output_dir
