"""The client side of ``rayft submit`` (no cluster needed): what a job ships, and what is refused before
anything is sent."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import yaml

from rayft.cli import main
from rayft.jobs import build_submission
from tests.support import cls_config


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_submission_ships_experiment_and_rayft(tiny_bert, sentiment_csv, tmp_path):
    config = _write(tmp_path, cls_config(tiny_bert, sentiment_csv, tmp_path, output_dir="runs"))
    sub = build_submission(config, ["train.lr=0.01"], working_dir=tmp_path, extra_args=["--no-export"])
    assert sub.entrypoint == "python -m rayft.cli sweep exp.yaml train.lr=0.01 --no-export"
    env = sub.runtime_env
    assert env["working_dir"] == str(tmp_path.resolve()) and "runs/" in env["excludes"]
    assert Path(env["py_modules"][0], "cli.py").is_file()  # this checkout's rayft, not the cluster's
    assert sub.metadata["rayft_experiment"] == "tiny-cls"
    assert any("output_dir='runs' is relative" in w for w in sub.warnings)


def test_reward_functions_ship_from_the_working_dir(tiny_llama, tmp_path):
    """An RL experiment's reward module travels in the working dir; one the job would not carry is refused here."""
    import pytest

    from rayft.errors import ConfigError
    from tests.support import tiny_tasks as tt

    data = tt.write_jsonl(tmp_path / "prompts.jsonl", tt.rl_prompts(24))
    (tmp_path / "my_rewards.py").write_text("def short(prompts, completions, **columns):\n"
                                            "    return [-len(c) / 100 for c in completions]\n")
    task = {"name": "grpo", "rewards": [{"function": "my_rewards:short"},
                                        {"function": "rayft.rl.library:length_target"}]}
    raw = cls_config(tiny_llama, data, tmp_path, output_dir="runs", task=task)
    raw["data"] = {"source": str(data), "validation_size": 8, "test_size": 0}
    sub = build_submission(_write(tmp_path, raw), working_dir=tmp_path)
    assert sub.runtime_env["working_dir"] == str(tmp_path.resolve())  # my_rewards.py goes with it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "my_rewards.py").rename(elsewhere / "my_rewards.py")
    with pytest.raises(ConfigError) as err:
        build_submission(tmp_path / "exp.yaml", working_dir=tmp_path)
    (error,) = err.value.errors
    assert error.path == "task.rewards[0].function" and "my_rewards.py" in error.expected


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server API
        self.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_POST = do_PUT = do_GET

    def log_message(self, *args):  # quiet
        pass


def test_bad_config_fails_before_anything_is_sent(tiny_bert, sentiment_csv, tmp_path, capsys):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        raw = cls_config(tiny_bert, sentiment_csv, tmp_path, train={"lr": -1}, method={"name": "nope"})
        config = _write(tmp_path, raw)
        code = main(["submit", str(config), "--address", f"http://127.0.0.1:{server.server_port}",
                     "--working-dir", str(tmp_path)])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert code == 2 and "train.lr" in err and "method.name" in err and "Traceback" not in err
    assert _Recorder.hits == []  # the cluster never heard of it


def test_config_outside_working_dir_is_refused(tiny_bert, sentiment_csv, tmp_path, capsys):
    config = _write(tmp_path, cls_config(tiny_bert, sentiment_csv, tmp_path))
    (tmp_path / "elsewhere").mkdir()
    assert main(["submit", str(config), "--address", "http://127.0.0.1:1", "--working-dir",
                 str(tmp_path / "elsewhere")]) == 2
    assert "outside the working dir" in capsys.readouterr().err


def test_submit_resume_adds_the_flag_once_and_needs_a_resumable_command(tiny_bert, sentiment_csv, tmp_path,
                                                                         capsys, monkeypatch):
    from rayft import jobs

    config = _write(tmp_path, cls_config(tiny_bert, sentiment_csv, tmp_path))
    sent: list[jobs.Submission] = []
    monkeypatch.setattr(jobs, "submit", lambda address, sub, token=None: sent.append(sub) or "raysubmit_1")
    for extra in ([], ["--arg=--resume"]):
        assert main(["submit", str(config), "--address", "http://127.0.0.1:1", "--working-dir", str(tmp_path),
                     "--arg=--no-export", "--resume", *extra]) == 0
    assert [s.entrypoint for s in sent] == ["python -m rayft.cli sweep exp.yaml --no-export --resume"] * 2
    assert main(["submit", str(config), "--address", "http://127.0.0.1:1", "--run", "validate", "--resume"]) == 2
    assert "--run sweep or --run train" in capsys.readouterr().err and len(sent) == 2
