"""The adapter store: ids that cannot leave it, whole versions put atomically, no overwrite unless asked."""

from __future__ import annotations

import json

import pytest

from rayft.errors import StoreError
from rayft.store import AdapterStore, Manifest, validate_id


@pytest.mark.parametrize("bad", ["../etc", "/abs", "a/b", "..", ".hidden", "", "x" * 200, "a\\b", "%2e%2e"])
def test_adapter_ids_cannot_escape_the_store(tmp_path, bad):
    with pytest.raises(StoreError):
        AdapterStore(tmp_path).path(bad)


def test_valid_ids_pass():
    assert validate_id("quickstart-best.v1_2") == "quickstart-best.v1_2"


def _manifest(adapter_id: str) -> Manifest:
    return Manifest(adapter_id=adapter_id, kind="adapter", base_model="m", base_fingerprint="f", method="lora",
                    task="sequence_classification", labels=["a", "b"], metrics={"eval_accuracy": 0.9}, config={})


def test_put_is_atomic_and_refuses_overwrite(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_model.safetensors").write_bytes(b"weights")
    store = AdapterStore(tmp_path / "store")
    store.put(src, _manifest("one"))
    assert json.loads((store.root / "one" / "rayft.json").read_text())["labels"] == ["a", "b"]
    with pytest.raises(StoreError, match="already exists"):
        store.put(src, _manifest("one"))
    store.put(src, _manifest("one"), overwrite=True)
    assert [m.adapter_id for m in store.list()] == ["one"]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_put_without_weights_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(StoreError, match="no model weights"):
        store.put(empty, _manifest("x"))
    assert not store.exists("x")
