"""A kill during checkpoint save never leaves the latest checkpoint unreadable: readers trust only what Ray
published (its snapshot is written after the copy), and skip partial folders."""

from __future__ import annotations

import json
from pathlib import Path

from rayft.cli import main
from rayft.train.checkpoints import is_complete, latest_checkpoint


def _checkpoint(folder: Path, step: int, *, complete: bool = True) -> Path:
    (folder / "model").mkdir(parents=True)
    (folder / "ds").mkdir()
    (folder / "model" / "adapter_config.json").write_text("{}")
    if complete:
        (folder / "model" / "adapter_model.safetensors").write_bytes(b"w" * 16)
        (folder / "latest").write_text("ds")
        (folder / "rayft_state.json").write_text(json.dumps({"step": step}))
    else:  # killed mid-copy: some files there, the state file cut short
        (folder / "rayft_state.json").write_text('{"step": ')
    return folder


def _snapshot(run: Path, *names: str) -> None:
    results = [{"checkpoint_dir_name": n, "metrics": {}} for n in names]
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"checkpoint_results": results, "latest_checkpoint_result": results[-1] if results else None}))


def test_partial_newer_folder_is_never_chosen(tmp_path: Path):
    run = tmp_path / "train-1"
    good = _checkpoint(run / "checkpoint_2026-01-01_00-00-01.000000", 4)
    partial = _checkpoint(run / "checkpoint_2026-01-01_00-00-09.000000", 8, complete=False)
    assert is_complete(str(good)) and not is_complete(str(partial))
    _snapshot(run, good.name)  # the kill came before Ray recorded the newer one
    assert latest_checkpoint(str(run)) == str(good)
    (run / "checkpoint_manager_snapshot.json").unlink()  # no snapshot (older Ray, copied folders): check content
    assert latest_checkpoint(str(run)) == str(good)


def test_published_but_damaged_falls_back_to_the_previous(tmp_path: Path):
    run = tmp_path / "train-2"
    older = _checkpoint(run / "checkpoint_a", 4)
    newer = _checkpoint(run / "checkpoint_b", 8)
    _snapshot(run, older.name, newer.name)
    assert latest_checkpoint(str(run)) == str(newer)
    (newer / "model" / "adapter_model.safetensors").unlink()  # e.g. a disk emptied under it
    assert latest_checkpoint(str(run)) == str(older)
    assert latest_checkpoint(str(tmp_path / "missing")) is None


def test_export_of_a_run_folder_uses_the_published_checkpoint(tmp_path: Path, capsys):
    run = tmp_path / "train-3"
    _checkpoint(run / "checkpoint_z", 8, complete=False)
    _snapshot(run)
    assert main(["export", str(run), "--store", str(tmp_path / "store")]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


def test_the_state_file_is_built_and_read_through_one_typed_object(tmp_path: Path):
    """The loop position, report, labels and config are one JSON object on disk, its position at the top level
    (as exports and older checkpoints have it); reading it back gives the same position."""
    from dataclasses import replace

    from rayft.train.handoff import STATE_FILE, CheckpointState, LoopState

    state = LoopState().trained(3).evaluating(8).recorded({"step": 2, "eval_loss": 0.5})
    assert (state.batch, state.evals, state.progress, state.history) == (4, 1, 0.5, ({"step": 2, "eval_loss": 0.5},))
    assert state.next_epoch() == replace(state, epoch=1, batch=0)
    saved = CheckpointState(replace(state, step=2, trial="trial_1"), {"eval_loss": 0.5}, ["neg", "pos"], {"name": "x"})
    saved.write(str(tmp_path))
    raw = json.loads((tmp_path / STATE_FILE).read_text())
    assert list(raw) == ["step", "epoch", "batch", "evals", "progress", "history", "trial", "metrics", "labels",
                         "config"]
    assert raw["history"] == [{"step": 2, "eval_loss": 0.5}] and raw["trial"] == "trial_1"
    assert CheckpointState.read(str(tmp_path)) == saved
    older = LoopState.from_json({"step": 5, "epoch": 1, "unknown": True})  # missing entries at their defaults
    assert older == LoopState(step=5, epoch=1)
