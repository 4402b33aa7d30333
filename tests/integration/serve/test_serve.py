"""rayft serve end to end: tiny adapters in a store, the Serve app on a free port, real HTTP on 127.0.0.1."""

from __future__ import annotations

import shutil

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from rayft.cluster import free_port
from tests.support.serve_helpers import LABELS, TEXTS, classify_and_chat_store, cls_adapter, expected_probs, manifest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_bert, tiny_llama, sentiment_csv, chat_jsonl):
    tmp = tmp_path_factory.mktemp("serve")
    st, cls_cfg = classify_and_chat_store(tmp, tiny_bert, tiny_llama, sentiment_csv, chat_jsonl)
    broken = st.put(tmp / "cls-a", manifest("broken", tiny_bert, "sequence_classification", cls_cfg, LABELS))
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file" * 8)
    return st


@pytest.fixture(scope="module")
def url(ray_local, store):
    import rayft.serve

    base_url = rayft.serve.start(str(store.root), port=free_port(), max_adapters=2)
    yield base_url
    rayft.serve.shutdown()


def _post(url: str, path: str, body=None, **kwargs) -> requests.Response:
    return requests.post(url + path, json=body, timeout=60, **kwargs)


def test_health_and_model_list(url, tiny_llama):
    from rayft.serve import Client

    client = Client(url)
    assert client.health()["status"] == "ok"
    listing = requests.get(url + "/v1/models", timeout=30).json()
    assert listing["object"] == "list"
    cards = {m["id"]: m for m in listing["data"]}
    assert {"cls-a", "cls-b", "chat-a", "broken", str(tiny_llama)} <= set(cards)
    a = cards["cls-a"]
    assert a["object"] == "model" and a["owned_by"] == "rayft" and isinstance(a["created"], int) and a["created"] > 0
    assert (a["task"], a["kind"], a["metrics"]) == ("sequence_classification", "adapter", {"eval_accuracy": 0.5})
    assert cards[str(tiny_llama)]["kind"] == "base" and cards["chat-a"]["task"] == "sft"


def test_classify_matches_in_process_predictions(url, store):
    expected = {a: expected_probs(store, a) for a in ("cls-a", "cls-b")}
    assert not torch.allclose(expected["cls-a"], expected["cls-b"], atol=1e-3)  # the adapters really differ
    for adapter_id in ["cls-a", "cls-b", "cls-a", "chat-a", "cls-b", "cls-a"]:  # hot-swap, with LRU evictions
        if adapter_id == "chat-a":
            assert _post(url, "/v1/completions", {"model": "chat-a", "prompt": "hello", "max_tokens": 2}).ok
            continue
        resp = _post(url, "/v1/classify", {"model": adapter_id, "inputs": TEXTS})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"] == adapter_id and body["object"] == "classification"
        got = torch.tensor([[row["probabilities"][n] for n in LABELS] for row in body["data"]])
        assert torch.allclose(got, expected[adapter_id], atol=1e-5)
        assert [row["index"] for row in body["data"]] == list(range(len(TEXTS)))
        assert [row["label"] for row in body["data"]] == [LABELS[i] for i in expected[adapter_id].argmax(-1)]

    def one(adapter_id: str) -> bool:  # concurrent requests: swaps and evictions must not mix adapters
        if adapter_id == "chat-a":
            return _post(url, "/v1/completions", {"model": "chat-a", "prompt": "hi", "max_tokens": 2}).ok
        rows = _post(url, "/v1/classify", {"model": adapter_id, "inputs": TEXTS}).json()["data"]
        got = torch.tensor([[row["probabilities"][n] for n in LABELS] for row in rows])
        return torch.allclose(got, expected[adapter_id], atol=1e-5)

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(one, ["cls-a", "cls-b", "chat-a"] * 4))


def test_completions_and_chat_are_openai_shaped(url, tiny_llama):
    from rayft.serve import Client

    client = Client(url)
    out = client.complete("chat-a", "what is the capital of france ?", max_tokens=4)
    assert out["object"] == "text_completion" and out["model"] == "chat-a" and out["id"].startswith("cmpl-")
    choice = out["choices"][0]
    assert isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length")
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    assert 0 < out["usage"]["completion_tokens"] <= 4
    chat = client.chat("chat-a", [{"role": "user", "content": "hello"}], max_tokens=3)
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(chat["choices"][0]["message"]["content"], str)
    plain = client.complete(str(tiny_llama), "hello there", max_tokens=3)  # the base model, no adapter
    assert plain["model"] == str(tiny_llama) and len(plain["choices"]) == 1


@pytest.mark.parametrize("body,status", [
    ({"model": "no-such-adapter", "inputs": ["x"]}, 404),
    ({"inputs": ["x"]}, 422),
    ({"model": "cls-a", "inputs": []}, 422),
    ({"model": "cls-a", "inputs": "not a list"}, 422),
    ({"model": 7, "inputs": ["x"]}, 422),
    ({"model": "../etc", "inputs": ["x"]}, 404),
    ({"model": "/etc/passwd", "inputs": ["x"]}, 404),
    ({"model": "chat-a", "inputs": ["x"]}, 400),
])
def test_classify_errors_are_json(url, body, status):
    resp = _post(url, "/v1/classify", body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["message"] and err["type"] and "Traceback" not in err["message"]


def test_other_client_mistakes(url):
    cases = [
        (_post(url, "/v1/classify", data="{not json", headers={"content-type": "application/json"}), 422),
        (_post(url, "/v1/completions", {"model": "chat-a", "prompt": "hi", "max_tokens": -1}), 422),
        (_post(url, "/v1/completions", {"model": "cls-a", "prompt": "hi"}), 400),
        (_post(url, "/v1/chat/completions", {"model": "chat-a", "messages": []}), 422),
        (requests.get(url + "/v1/nothing-here", timeout=30), 404),
    ]
    for resp, status in cases:
        assert resp.status_code == status, resp.text
        assert set(resp.json()["error"]) == {"message", "type", "code", "param"}


def test_corrupt_adapter_fails_alone_and_new_adapters_appear(url, store, tmp_path, tiny_bert):
    from rayft.serve import Client, ServeClientError

    client = Client(url)
    with pytest.raises(ServeClientError) as info:
        client.classify("broken", TEXTS)
    assert info.value.status == 500 and info.value.type == "model_load_error"
    assert "broken" in info.value.message and "Traceback" not in info.value.message
    assert client.classify("cls-a", TEXTS)["data"]
    with pytest.raises(ServeClientError) as info:
        client.classify("missing", TEXTS)
    assert info.value.status == 404

    fresh = store.manifest("cls-b")
    fresh.adapter_id = "cls-new"
    store.put(cls_adapter(tiny_bert, tmp_path / "new", seed=7), fresh)  # exported while the server runs
    got = torch.tensor([[r["probabilities"][n] for n in LABELS] for r in client.classify("cls-new", TEXTS)["data"]])
    assert torch.allclose(got, expected_probs(store, "cls-new"), atol=1e-5)
    shutil.rmtree(store.path("cls-new"))
