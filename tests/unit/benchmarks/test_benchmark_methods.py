"""The methods benchmark's bookkeeping: per-suite configs, ratios against the same run's baseline, skipped methods,
the ZeRO-3 / ZeRO-0 memory ratio and its goal, and the docs block per suite."""

from types import SimpleNamespace

import pytest

from tests.support.benchmark_module import load


@pytest.fixture(scope="module")
def bench():
    return load("methods")


def _args(bench, task, **kw):
    args = SimpleNamespace(task=task, zero_memory=False, warmup=1, methods=None, docs=None,
                           gradient_checkpointing=False,
                           **{k: None for k in ("train_size", "test_size", "steps", "batch_size", "max_length",
                                                "eval_batch_size")})
    vars(args).update({**bench.SUITES[task].defaults, **kw})
    return args


def _row(method, speed, peak, test, stage=2, **extra):
    return {"method": method, "zero_stage": stage, "trainable_params": 10, "trainable_pct": 1.0, "lr": 1e-3,
            "samples_per_s": speed, "peak_mb_per_worker": peak, "peak_mb_workers": [peak, peak - 1],
            "test": test, "final_loss": 1.0, **extra}


def test_each_suite_gives_every_method_the_same_budget_on_its_own_model(bench):
    sft = _args(bench, "sft", steps=7, batch_size=4, max_length=96)
    lora, full = bench.experiment("lora", sft, "/tmp"), bench.experiment("full", sft, "/tmp", zero_stage=3)
    assert lora["model"] == {"name": "smollm2-135m", "max_length": 96} and lora["task"] == {"name": "sft"}
    assert lora["data"]["source"] == "chatterbot" and lora["method"]["target_modules"] == ["q_proj", "v_proj"]
    assert bench.experiment("bitfit", sft, "/tmp")["method"] == {"name": "bitfit", "norms": True}
    assert {k: lora["train"][k] for k in ("max_steps", "batch_size")} == {"max_steps": 7, "batch_size": 4}
    assert lora["train"]["max_steps"] == full["train"]["max_steps"] and full["scaling"]["zero_stage"] == 3
    cls = bench.experiment("lora", _args(bench, "sequence_classification"), "/tmp")
    assert cls["model"]["name"] == "minilm-l6" and "task" not in cls and cls["scaling"]["zero_stage"] == 2
    assert cls["method"]["target_modules"] == ["query", "value"]


def test_the_report_compares_each_method_with_full_from_the_same_run_and_lists_skipped_ones(bench):
    args = _args(bench, "sft")
    rows = [_row("full", 2.0, 1000.0, {"loss": 2.0, "perplexity": 7.39}),
            _row("lora", 4.0, 250.0, {"loss": 2.5, "perplexity": 12.18})]
    report = bench.methods_report(rows, {"prompt": "no reason"}, args, 12.34)
    assert report["quality"] == {"metric": "test_loss", "better": "lower"} and report["skipped"] == {
        "prompt": "no reason"}
    lora = report["methods"]["lora"]
    assert lora["speed_vs_full"] == 2.0 and lora["memory_vs_full"] == 0.25 and lora["test_loss"] == 2.5
    assert lora["test_loss_minus_full"] == 0.5 and lora["test_perplexity"] == 12.18
    text = bench.table(rows, {"prompt": "no reason"}, args)
    assert "lower is better" in text and "test loss (↓)" in text and "| prompt | skipped: no reason |" in text
    cls = bench.methods_report([_row("full", 2.0, 10.0, {"accuracy": 0.8})], {}, _args(
        bench, "sequence_classification"), 1.0)
    assert cls["quality"]["better"] == "higher" and cls["methods"]["full"]["test_accuracy"] == 0.8


def test_zero3_is_compared_with_zero0_against_the_goal(bench):
    args = _args(bench, "sequence_classification")
    zero0 = _row("full", 4.0, 1000.0, {"accuracy": 0.6}, stage=0)
    report = bench.zero_report(zero0, _row("full", 3.0, 550.0, {"accuracy": 0.6}, stage=3), args, 5.0)
    assert report["zero3_over_zero0"] == 0.55 and report["goal_met"] is True
    assert report["stages"]["0"]["peak_mb_workers"] == [1000.0, 999.0]
    assert "not met" not in bench.zero_table(report, args)
    report = bench.zero_report(zero0, _row("full", 3.0, 700.0, {"accuracy": 0.6}, stage=3), args, 5.0)
    assert report["zero3_over_zero0"] == 0.7 and report["goal_met"] is False
    assert "not met" in bench.zero_table(report, args)


def test_each_suite_and_mode_writes_its_own_docs_block(bench, tmp_path):
    doc = tmp_path / "methods.md"
    doc.write_text("# Methods\n\n<!-- bench:methods:start -->\nold\n<!-- bench:methods:end -->\ntail\n")
    bench.write_docs(doc, "classification table")
    bench.write_docs(doc, "sft table", "methods-sft")
    bench.write_docs(doc, "sft table 2", "methods-sft")
    text = doc.read_text()
    assert "old" not in text and "classification table" in text and "tail" in text
    assert text.count("<!-- bench:methods-sft:start -->") == 1 and "sft table 2" in text and "sft table\n" not in text
