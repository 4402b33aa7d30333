"""rayft's console: lines that stay, a live block redrawn in place on a terminal only, the process's output in a log
file (echoed with verbose), warnings as one line; the sweep's trial lines and the training bar."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from rayft.console import Console, duration, fmt
from rayft.sweep.progress import SweepView, TrialLine, short_names
from rayft.train.progress import Evaluation, Note, StepProgress, TrainView


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_block_is_redrawn_in_place_on_a_terminal_only():
    term = _Terminal()
    console = Console(term)
    console.live(["trial a 1/4"])
    console.live(["trial a 2/4"])
    console.line("eval @ step 2")
    text = term.getvalue()
    assert text.count("\x1b[1F") >= 2  # moved up over the old block before each redraw
    assert text.endswith("eval @ step 2\ntrial a 2/4\n")  # the line stays above the block, the block below

    pipe = io.StringIO()
    plain = Console(pipe)
    plain.live(["trial a 1/4"])
    plain.line("eval @ step 2")
    assert pipe.getvalue() == "eval @ step 2\n"  # no escape codes, no block where nobody sees it redrawn


def test_output_goes_to_the_log_file_and_the_terminal_keeps_rayfts_lines(tmp_path):
    script = f"""
import os, sys, warnings
from rayft.console import Console
with Console(verbose={{verbose}}) as console:
    console.log_to({str(tmp_path)!r} + "/rayft.log")
    print("from print")
    os.write(1, b"from fd 1\\n")
    os.write(2, b"from fd 2\\n")
    console.line("rayft line")
    warnings.warn("a library's notice", UserWarning)
print("after")
"""
    for verbose in (False, True):
        log = tmp_path / "rayft.log"
        log.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "-c", script.replace("{verbose}", str(verbose))], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        text = log.read_text()
        assert all(s in text for s in ("from print", "from fd 1", "from fd 2", "a library's notice")), text
        assert "rayft line" not in text
        assert done.stdout.startswith(f"log: {log}")
        assert "rayft line\n" in done.stdout and done.stdout.endswith("after\n")
        shown = done.stdout + done.stderr
        assert ("from fd 1" in shown and "from fd 2" in shown) is verbose, shown


def test_rayfts_own_warnings_stay_on_the_terminal_as_one_line(tmp_path):
    """(A library's warning goes to the log: the test above.)"""
    term = io.StringIO()
    saved = os.dup(1), os.dup(2)
    try:
        with Console(term) as console:
            console.log_to(tmp_path / "rayft.log")
            console._show_warning("data.source: 3 rows dropped\nsecond line", UserWarning,
                                  os.path.join(os.path.dirname(sys.modules["rayft"].__file__), "data", "x.py"), 1)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
    assert "warning: data.source: 3 rows dropped\n" in term.getvalue() and "second line" not in term.getvalue()


def test_a_trial_line_has_status_parameters_metric_progress_and_time():
    params = {"train.lr": 0.000312, "method.r": 8, "method.lora.r": 4}
    assert short_names(params) == {"train.lr": "lr", "method.r": "method.r", "method.lora.r": "method.lora.r"}
    view = SweepView(Console(io.StringIO()), "eval_accuracy", "max")
    line = TrialLine("t1", {"train.lr": 0.000312, "method.r": 8}, status="RUNNING", latest=0.78, best=0.8, step=126,
                     steps=252, started=100.0, names={"train.lr": "lr", "method.r": "r"})
    assert view.render(line, 172.0) == ("t1         RUNNING  lr=0.000312 r=8 | eval_accuracy 0.78 (best 0.8) | "
                                        "#####..... 126/252 | 1m12s")
    view.trials["t1"] = line
    assert view.header(view.started_at + 5).startswith("trials: 1 running; best eval_accuracy 0.8 (t1); 5s")


def test_the_training_view_prints_a_bar_evaluations_and_notes_without_a_terminal():
    out = io.StringIO()
    view = TrainView(board=None, console=Console(out))
    view.show(Note("lora: 1,090 of 24,996 parameters trainable"))
    for step in range(1, 21):
        view.show(StepProgress(step, 20, 0.5, 1e-3, 30.0, at=view.started + step))
    view.show(Evaluation(20, {"eval_accuracy": 0.8125}))
    lines = out.getvalue().splitlines()
    assert lines[0] == "lora: 1,090 of 24,996 parameters trainable"
    bars = [line for line in lines if line.startswith("[")]
    assert len(bars) == 10  # a line per tenth of the run
    assert bars[0].startswith("[" + "#" * 2 + "." * 22 + "] 2/20  10% loss 0.5 | 30.0 samples/s | lr 1.0e-03")
    assert "~18s left" in bars[0] and bars[-1].startswith("[" + "#" * 24 + "] 20/20 100%")
    assert lines[-1] == "eval @ step 20: eval_accuracy=0.8125"


def test_numbers_and_durations_read_as_people_write_them():
    assert [fmt(v) for v in (0.8125, 0.000312, 12345.6, 3, None, 0.5)] == ["0.8125", "0.000312", "1.23e+04", "3",
                                                                          "-", "0.5"]
    assert [duration(s) for s in (5, 65, 3600)] == ["5s", "1m05s", "60m00s"]
