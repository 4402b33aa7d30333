"""What ``rayft sweep`` prints: rayft's own view of its trials, trials that ASHA stops end without a crash dump, the
libraries' output goes to the sweep's log file, and nothing the sweep started is left once it returned."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from tests.support import cls_config
from tests.support.processes import rayft_command, watch

pytestmark = pytest.mark.integration

CRASH = re.compile(r"Fatal Python error|SIGABRT|Traceback \(most recent call last\)|terminate called")
RAY_ERROR = re.compile(r"^\[[\d\- :,]+ E \d+ \d+\]|\bERROR\b", re.M)  # Ray's error-level lines


def test_a_sweep_shows_its_trials_and_stopping_is_not_crashing(tiny_bert, sentiment_csv, tmp_path):
    # Four trials, two at a time, ranked by their trainable parameters (the LoRA rank decides them, so which
    # trials lose is known): ASHA keeps the best quarter at each rung, so the later, smaller trials are stopped at
    # their first evaluation while their workers go on training (each report is followed by more steps).
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="console-sweep",
                     train={"max_steps": 24, "eval_every": 3, "batch_size": 8},
                     tracking={"wandb": True, "mode": "offline", "project": "rayft-tests"},
                     sweep={"searcher": "grid", "scheduler": "asha", "grace_period": 1, "reduction_factor": 4,
                            "objectives": [{"metric": "trainable_params", "mode": "max"},
                                           {"metric": "eval_loss", "mode": "min"}],
                            "space": {"method.r": {"choice": [8, 4, 2, 1]}}})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw))
    cmd, env = rayft_command("sweep", str(config), "--no-export")
    done = watch(cmd, env, tmp_path)
    out = done.output
    assert done.returncode == 0, out[-3000:]

    # rayft's view: where the log is, a line per trial event (status, parameters, metric, progress, time), the table.
    lines = out.splitlines()
    log = re.search(r"^log: (\S+)", out, re.M)
    assert log and log.group(1).endswith("rayft.log"), out[:500]
    trial_lines = [line for line in lines if re.match(r"^\w+\s+(RUNNING|DONE|STOPPED)\s+r=\d \| "
                                                      r"trainable_params \S+.* \| [#.]{10} \d+/24 \| \d", line)]
    assert any(" STOPPED " in line for line in trial_lines), out  # ASHA stopped at least one trial
    assert any(" DONE " in line for line in trial_lines), out
    assert "trials (max trainable_params)" in out and "best trial" in out
    assert len(lines) < 70, out  # 4 trials: no per-result tables, no worker chatter
    assert not CRASH.search(out) and not RAY_ERROR.search(out), out
    assert "TrainingReport(" not in out and "(RayTrainWorker" not in out and "built successfully" not in out

    # The libraries' output is in the log file, without a crash dump from the stopped trials' workers.
    text = open(log.group(1)).read()
    assert "(RayTrainWorker" in text and "TrainingReport(" in text
    assert not CRASH.search(text), CRASH.search(text)

    # Nothing the sweep started is left 10 s after it returned.
    assert done.started and not done.left_after(10), done.left_after(0)


ACTOR = """
import glob, os, sys, threading, time
import ray

ray.init(num_cpus=1, include_dashboard=False)

@ray.remote
class Busy:
    def __init__(self, hook):
        if hook:
            from rayft.exits import exit_without_finalizing
            exit_without_finalizing()

    def start(self):
        import torch

        def loop():  # a training thread, inside a torch op most of the time
            a = torch.randn(300, 300)
            while True:
                torch.nn.functional.linear(a, a)

        threading.Thread(target=loop, daemon=True).start()
        return os.getpid()

actor = Busy.remote(sys.argv[1] == "1")
pid = ray.get(actor.start.remote())
time.sleep(1.5)
actor.__ray_terminate__.remote()  # Ray ends the actor on purpose, as when Tune stops a trial
time.sleep(5)
logs = ray._private.worker.global_worker.node.get_logs_dir_path()
print("DUMPS", sum("Fatal Python error" in open(f).read() for f in glob.glob(f"{logs}/worker-*-{pid}.err")))
"""


def test_a_process_ended_mid_op_leaves_without_a_crash_dump(tmp_path):
    """The cause of the dumps: Python's finalization ends a thread that waits for the GIL inside a torch op with
    pthread_exit, and the C++ frames it unwinds abort. Without the hook the dump appears; with it, never."""
    script = tmp_path / "busy.py"
    script.write_text(ACTOR)
    cmd, env = rayft_command()
    runs = {hook: subprocess.run([sys.executable, str(script), hook], env=env, capture_output=True, text=True,
                                 timeout=300) for hook in ("1", "0")}
    for hook, run in runs.items():
        assert run.returncode == 0, run.stderr[-2000:]
    assert "DUMPS 0" in runs["1"].stdout
    assert "DUMPS 1" in runs["0"].stdout  # the failure this guards against is real on this Ray and torch
