"""The sweep report: a self-contained HTML page rendered in headless Chromium; W&B offline-run reading."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from rayft.cli import main
from rayft.sweep import pareto_front
from rayft.sweep.results import SUMMARY_FILE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _summary(n: int = 6) -> dict:
    rng = random.Random(1)
    trials = []
    for i in range(n):
        method = ["lora", "full"][i % 2]
        params = {"method.name": method, "train.lr": 10 ** rng.uniform(-4, -2)}
        if method == "lora":
            params.update({"method.lora.r": rng.choice([4, 8]), "method.lora.target_modules": '["query"]'})
        evals = 4 if i < 4 else 1
        curve = [{"training_iteration": k + 1, "eval_accuracy": 0.5 + 0.08 * k * rng.random(), "step": 10 * (k + 1)}
                 for k in range(evals)]
        metrics = {"eval_accuracy": curve[-1]["eval_accuracy"], "trainable_params": 1000 if method == "lora" else 90000,
                   "latency_ms": rng.uniform(1, 3), "final": evals == 4, "training_iteration": evals}
        trials.append({"trial_id": f"t{i:02d}", "status": "DONE" if evals == 4 else "STOPPED", "params": params,
                       "metrics": metrics, "checkpoint_path": None, "evaluations": evals, "curve": curve})
    objectives = [["eval_accuracy", "max"], ["trainable_params", "min"], ["latency_ms", "min"]]

    class Row:
        def __init__(self, t):
            self.trial_id, self.metrics = t["trial_id"], t["metrics"]

    pareto = pareto_front([Row(t) for t in trials], [tuple(o) for o in objectives])
    best = max(trials[:4], key=lambda t: t["metrics"]["eval_accuracy"])["trial_id"]
    return {"name": "sweep-test", "metric": "eval_accuracy", "mode": "max", "seconds": 12.0, "best": best,
            "config": {}, "objectives": objectives, "pareto": pareto, "storage": None, "trials": trials}


@pytest.fixture()
def sweep_dir(tmp_path):
    folder = tmp_path / "sweep-test"
    folder.mkdir()
    (folder / SUMMARY_FILE).write_text(json.dumps(_summary()))
    return folder


def test_report_command_writes_a_page_and_prints_a_summary(sweep_dir, capsys):
    assert main(["report", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "trials (max eval_accuracy)" in out and "Pareto front (max eval_accuracy, min trainable_params" in out
    page = (sweep_dir / "report.html").read_text()
    assert page.count("<script") >= 4 and "<script src=" not in page  # plotly.js is inlined: works offline
    assert main(["report", str(sweep_dir.parent)]) == 2  # not a sweep folder: a clear error, exit 2
    assert "not a finished sweep folder" in capsys.readouterr().err


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="needs the Debian packages chromium and chromium-driver (make install-system)")
def test_report_renders_in_headless_chromium(sweep_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    main(["report", str(sweep_dir)])
    summary = _summary()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get((sweep_dir / "report.html").resolve().as_uri())
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3"))
        traces = driver.execute_script(
            "return ['curves','parallel','pareto'].map(id => document.getElementById(id).data.length)")
        assert traces == [len(summary["trials"]), 1, 2]  # a curve per trial; one parcoords; front + others
        front = driver.execute_script("return document.getElementById('pareto').data[1].text")
        assert sorted(front) == sorted(summary["pareto"])
        dims = driver.execute_script("return document.getElementById('parallel').data[0].dimensions.map(d => d.label)")
        assert "method.name" in dims and "train.lr" in dims and dims[-1] == "eval_accuracy"
        # The table sorts by a clicked column, numerically.
        headers = driver.find_elements(By.CSS_SELECTOR, "#trials th")
        col = [h.text for h in headers].index("eval_accuracy")
        headers[col].click()
        headers[col].click()  # descending
        values = [float(r.find_elements(By.TAG_NAME, "td")[col].text)
                  for r in driver.find_elements(By.CSS_SELECTOR, "#trials tbody tr")]
        assert values == sorted(values, reverse=True) and len(values) == len(summary["trials"])
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()


def test_offline_wandb_runs_are_read_back(tmp_path):
    import wandb

    from rayft.track.wandb_files import incomplete_runs, offline_runs, wait_complete

    run = wandb.init(project="rayft-tests", dir=str(tmp_path), mode="offline", id="trial1", name="trial1",
                     group="sweep-x", config={"train.lr": 0.01})
    for step in range(3):
        run.log({"eval_accuracy": 0.5 + step / 10}, step=step)
    run.finish()
    assert wait_complete(tmp_path, ["trial1"]) == {}  # wandb's writer flushes shortly after finish()
    (loaded,) = offline_runs(tmp_path)
    assert loaded.run_id == "trial1" and loaded.group == "sweep-x" and loaded.config["train.lr"] == 0.01
    assert [round(h["eval_accuracy"], 2) for h in loaded.history] == [0.5, 0.6, 0.7]
    assert loaded.finished and loaded.summary["eval_accuracy"] == pytest.approx(0.7)
    assert incomplete_runs(tmp_path, ["trial1", "trial2"]) == {"trial2": "no offline run"}
