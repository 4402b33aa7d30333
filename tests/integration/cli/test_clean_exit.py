"""Clean exits: once ``rayft train`` or ``rayft serve`` returns, or is stopped with Ctrl-C, none of the processes
it started (its local Ray's, Ray Train's controller and workers included) is left 10 s later. ``rayft sweep``'s
own check is in test_console.py."""

from __future__ import annotations

import re

import pytest
import yaml

from rayft.cluster import free_port
from tests.support import cls_config
from tests.support.processes import rayft_command, watch

pytestmark = pytest.mark.integration


def _train_config(tiny_bert, sentiment_csv, tmp_path, **train) -> str:
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="clean-exit",
                     train={"max_steps": 12, "eval_every": 3, "batch_size": 8, "log_every": 1, **train})
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(raw))
    return str(config)


def test_train_shows_progress_and_leaves_nothing_behind(tiny_bert, sentiment_csv, tmp_path):
    cmd, env = rayft_command("train", _train_config(tiny_bert, sentiment_csv, tmp_path))
    done = watch(cmd, env, tmp_path)
    out = done.output
    assert done.returncode == 0, out[-3000:]
    # Without a terminal: the progress as plain bar lines (loss, throughput), a line per evaluation, no chatter.
    assert re.search(r"^\[#+\.*\] \d+/12 +\d+% loss \S+ \| [\d.]+ samples/s", out, re.M), out
    assert len(re.findall(r"^eval @ step \d+: eval_loss=", out, re.M)) == 4, out
    assert re.search(r"^log: \S+/train-[\d-]+/rayft\.log", out, re.M), out
    assert "TrainingReport(" not in out and "Traceback" not in out and len(out.splitlines()) < 30, out
    assert len(done.started) >= 4, done.started  # Ray's own processes, the Train controller and its worker
    assert not done.left_after(10), done.left_after(0)


def test_ctrl_c_during_training_leaves_nothing_behind(tiny_bert, sentiment_csv, tmp_path):
    config = _train_config(tiny_bert, sentiment_csv, tmp_path, max_steps=2000, eval_every=1000)
    cmd, env = rayft_command("train", config)
    done = watch(cmd, env, tmp_path, interrupt_when=lambda out: re.search(r"^\[#*\.+\] \d+/2000", out, re.M))
    assert done.returncode == 130, done.output[-3000:]  # stopped by the interrupt, not finished
    assert "interrupted" in done.output and "Traceback" not in done.output, done.output[-3000:]
    assert done.started and not done.left_after(10), done.left_after(0)


@pytest.mark.slow
def test_ctrl_c_stops_serve_and_its_ray(tmp_path):
    (tmp_path / "store").mkdir()
    cmd, env = rayft_command("serve", "--store", str(tmp_path / "store"), "--port", str(free_port()))
    done = watch(cmd, env, tmp_path, timeout=600, interrupt_when=lambda out: "serving " in out)
    assert done.returncode == 0 and "shutting down" in done.output, done.output[-3000:]
    assert done.started and not done.left_after(10), done.left_after(0)
