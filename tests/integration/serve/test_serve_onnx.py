"""rayft serve with exported entries: a merged model, an ONNX graph and an int8 graph answer /v1/classify on the same
routes as their adapter, with the same labels, and `rayft eval` compares the adapter and its int8 export over HTTP."""

from __future__ import annotations

import json

import pytest
import requests
import torch

from rayft.cluster import free_port
from rayft.export import ExportRequest, export_entry
from rayft.store import AdapterStore
from tests.support import export_cases as cases
from tests.support.serve_helpers import LABELS, TEXTS, expected_probs, probs_of

pytestmark = pytest.mark.integration
EXPORTS = ("merged", "onnx", "onnx-int8")


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_bert, tiny_llama, sentiment_csv, chat_jsonl):
    tmp = tmp_path_factory.mktemp("serve-onnx")
    st = AdapterStore(tmp / "store")
    cases.cls_entry(st, tiny_bert, sentiment_csv, tmp)
    for fmt in EXPORTS:
        export_entry(st, ExportRequest("cls", fmt))
    cases.sft_entry(st, tiny_llama, chat_jsonl, tmp)
    export_entry(st, ExportRequest("chat", "onnx"))  # a causal LM's graph: listed as refused, with the reason
    return st


@pytest.fixture(scope="module")
def url(ray_local, store):
    import rayft.serve

    base_url = rayft.serve.start(str(store.root), port=free_port(), max_adapters=4)
    yield base_url
    rayft.serve.shutdown()


def test_exports_answer_with_their_sources_labels(url, store):
    cards = {m["id"]: m for m in requests.get(url + "/v1/models", timeout=30).json()["data"]}
    assert {"cls", "cls-merged", "cls-onnx", "cls-onnx-int8"} <= set(cards)
    assert cards["cls-onnx-int8"]["kind"] == "onnx" and cards["cls-merged"]["kind"] == "full"
    source = expected_probs(store, "cls")
    for entry in ("cls", *(f"cls-{f}" for f in EXPORTS)):
        resp = requests.post(url + "/v1/classify", json={"model": entry, "inputs": TEXTS}, timeout=60)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert [row["label"] for row in body["data"]] == [LABELS[i] for i in source.argmax(-1)], entry
        if entry != "cls-onnx-int8":  # float32 exports: the same probabilities
            assert torch.allclose(probs_of(body), source, atol=1e-4), entry
    refused = requests.post(url + "/v1/completions", json={"model": "chat-onnx", "prompt": "hi"}, timeout=60)
    assert refused.status_code == 422 and "no decoding loop" in refused.json()["error"]["message"]


def test_rayft_eval_compares_the_adapter_and_its_int8_export(url, sentiment_csv, tmp_path, capsys):
    from rayft.cli import main

    out = tmp_path / "ranking.json"
    code = main(["eval", "--endpoint", url, "--data", str(sentiment_csv), "--text-column", "review",
                 "--label-column", "sentiment", "--models", "cls,cls-onnx-int8", "--limit", "80",
                 "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    scores = {s["model"]: s["metrics"]["accuracy"] for s in json.loads(out.read_text())["ranking"]}
    assert set(scores) == {"cls", "cls-onnx-int8"} and scores["cls"] > 0.9
    assert abs(scores["cls"] - scores["cls-onnx-int8"]) <= 0.0125  # at most one of 80 rows answered differently
