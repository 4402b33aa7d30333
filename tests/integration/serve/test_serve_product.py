"""Serving as a product, end to end over real HTTP: the official openai client, streaming, full-weight models,
admin routes (register, unregister, aliases) behind a bearer token, refusal of incompatible results, path
traversal, and the sweep -> eval -> promote loop with traffic flowing."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from rayft.cluster import free_port
from tests.support import cls_config
from tests.support.serve_helpers import (LABELS, TEXTS, classify_and_chat_store, config, expected_probs, manifest,
                                         merged_model, probs_of)

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_bert, tiny_llama, sentiment_csv, chat_jsonl):
    from rayft.store import AdapterStore

    tmp = tmp_path_factory.mktemp("product")
    st, cls_cfg = classify_and_chat_store(tmp, tiny_bert, tiny_llama, sentiment_csv, chat_jsonl)
    full_cfg = config(cls_config(tiny_bert, sentiment_csv, tmp, method={"name": "full"}))
    st.put(merged_model(tiny_bert, tmp / "cls-a", tmp / "merged"),
           manifest("merged-a", tiny_bert, "sequence_classification", full_cfg, LABELS, kind="full", method="full",
                    architecture="BertForSequenceClassification"))
    # results this server must refuse, each for its own reason
    st.put(tmp / "cls-b", manifest("wrong-weights", tiny_bert, "sequence_classification", cls_cfg, LABELS,
                                   base_fingerprint="0123456789abcdef"))
    st.put(tiny_llama, manifest("wrong-arch", tiny_bert, "sequence_classification", full_cfg, LABELS, kind="full",
                                method="full"))
    st.put(tmp / "cls-b", manifest("wrong-task", tiny_bert, "sft", cls_cfg))
    st.put(tmp / "cls-b", manifest("other-base", tiny_bert, "sequence_classification", cls_cfg, LABELS,
                                   base_model=str(tmp / "not-served")))
    # a valid result outside the store: no id may reach it
    AdapterStore(tmp).put(tmp / "cls-b", manifest("secret", tiny_bert, "sequence_classification", cls_cfg, LABELS))
    return st


@pytest.fixture(scope="module")
def url(ray_local, store, tiny_bert, tiny_llama):
    import rayft.serve

    base_url = rayft.serve.start(str(store.root), port=free_port(), max_adapters=2, num_cpus=0.5,
                                 admin_token=TOKEN, bases=[str(tiny_bert), str(tiny_llama)])
    yield base_url
    rayft.serve.shutdown()


def _post(url, path, body=None, **kw):
    return requests.post(url + path, json=body, timeout=120, **kw)


def _classify(url, model, texts=TEXTS):
    resp = _post(url, "/v1/classify", {"model": model, "inputs": list(texts)})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_openai_client_lists_completes_chats_and_streams(url, tiny_llama):
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    ids = {m.id for m in client.models.list()}
    assert {"cls-a", "cls-b", "merged-a", "chat-a", str(tiny_llama)} <= ids
    assert not ids & {"wrong-weights", "wrong-arch", "wrong-task", "other-base", "secret"}

    done = client.completions.create(model="chat-a", prompt="what is the capital of france ?", max_tokens=6,
                                     temperature=0)
    assert done.object == "text_completion" and done.choices[0].finish_reason in ("stop", "length")
    pieces = list(client.completions.create(model="chat-a", prompt="what is the capital of france ?", max_tokens=6,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in pieces if c.choices) == done.choices[0].text
    assert pieces[-1].choices[0].finish_reason == done.choices[0].finish_reason

    messages = [{"role": "user", "content": "hello"}]
    chat = client.chat.completions.create(model="chat-a", messages=messages, max_tokens=5, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 5
    chunks = list(client.chat.completions.create(model="chat-a", messages=messages, max_tokens=5, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.total_tokens == chat.usage.total_tokens

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=messages, stream=True)
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="chat-a", prompt="hi", max_tokens=-1)


def test_streaming_is_server_sent_events(url):
    with requests.post(url + "/v1/chat/completions", json={"model": "chat-a", "stream": True, "max_tokens": 3,
                                                           "messages": [{"role": "user", "content": "hi"}]},
                       stream=True, timeout=120) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines(decode_unicode=True) if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_full_weight_model_serves_like_its_adapter(url, store):
    cards = {m["id"]: m for m in requests.get(url + "/v1/models", timeout=60).json()["data"]}
    assert cards["merged-a"]["kind"] == "full" and cards["cls-a"]["kind"] == "adapter"
    expected = expected_probs(store, "cls-a")
    assert torch.allclose(probs_of(_classify(url, "merged-a")), expected, atol=1e-4)
    assert torch.allclose(probs_of(_classify(url, "cls-a")), expected, atol=1e-5)


def test_concurrent_requests_across_adapters_get_their_own_answers(url, store):
    expected = {m: expected_probs(store, m) for m in ("cls-a", "cls-b", "merged-a")}
    assert not torch.allclose(expected["cls-a"], expected["cls-b"], atol=1e-3)

    def one(model: str) -> bool:  # mixed-adapter batches and LRU evictions (2 resident) must not mix answers
        return torch.allclose(probs_of(_classify(url, model)), expected[model], atol=1e-4)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, ["cls-a", "cls-b", "merged-a"] * 6))


@pytest.mark.parametrize("model,status,code", [
    ("wrong-weights", 409, "base_mismatch"),
    ("wrong-arch", 409, "architecture_mismatch"),
    ("other-base", 409, "base_not_served"),
    ("wrong-task", 422, "task_mismatch"),
])
def test_incompatible_results_are_refused(url, model, status, code):
    resp = _post(url, "/v1/classify", {"model": model, "inputs": ["x"]})
    assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), resp.text
    assert model in resp.json()["error"]["message"]
    resp = _post(url, "/admin/adapters", {"model": model}, headers=AUTH)
    assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), resp.text
    refused = requests.get(url + "/admin/models", headers=AUTH, timeout=60).json()["refused"]
    assert model in refused


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/admin/models", None),
    ("GET", "/admin/aliases", None),
    ("POST", "/admin/adapters", {"model": "cls-a"}),
    ("DELETE", "/admin/adapters/cls-a", None),
    ("PUT", "/admin/aliases/production", {"model": "cls-a"}),
    ("DELETE", "/admin/aliases/production", None),
])
def test_admin_routes_need_the_token(url, method, path, body):
    for headers, status in [({}, 401), ({"Authorization": "Bearer wrong-token"}, 403),
                            ({"Authorization": TOKEN}, 401)]:
        resp = requests.request(method, url + path, json=body, headers=headers, timeout=60)
        assert resp.status_code == status, (headers, resp.text)
        assert set(resp.json()["error"]) == {"message", "type", "code", "param"}
        assert (resp.headers.get("www-authenticate", "").startswith("Bearer")) == (status == 401)
    assert _classify(url, "cls-a")["data"]  # nothing changed


def test_register_unregister_and_alias_without_restart(url, store):
    from rayft.serve import Client, ServeClientError

    admin = Client(url, admin_token=TOKEN)
    assert admin.unregister("cls-b")["registered"] is False
    assert _post(url, "/v1/classify", {"model": "cls-b", "inputs": ["x"]}).status_code == 404
    assert "cls-b" not in {m["id"] for m in admin.models()} and store.exists("cls-b")
    card = admin.register("cls-b", warm=True)
    assert card["id"] == "cls-b" and card["registered"]
    assert torch.allclose(probs_of(_classify(url, "cls-b")), expected_probs(store, "cls-b"), atol=1e-5)

    assert admin.set_alias("staging", "cls-a")["previous"] is None
    got = _classify(url, "staging")
    assert got["model"] == "staging" and torch.allclose(probs_of(got), expected_probs(store, "cls-a"), atol=1e-5)
    assert {m["id"]: m.get("alias_of") for m in admin.models()}["staging"] == "cls-a"
    for alias, model, status in [("staging", "no-such", 404), ("cls-b", "cls-a", 409),
                                 ("other", "staging", 422), ("other", "wrong-weights", 409)]:
        with pytest.raises(ServeClientError) as info:
            admin.set_alias(alias, model)
        assert info.value.status == status, info.value.message
    with pytest.raises(ServeClientError) as info:
        admin.unregister("cls-a")  # staging points at it
    assert info.value.status == 409 and "staging" in info.value.message
    assert requests.delete(url + "/admin/aliases/staging", headers=AUTH, timeout=60).json()["deleted"]
    assert _post(url, "/v1/classify", {"model": "staging", "inputs": ["x"]}).status_code == 404


@pytest.mark.parametrize("model", ["../secret", "/etc/passwd", "..", "cls-a/../../secret", "%2e%2e%2fsecret",
                                   "..%2Fsecret", "..\\secret", "secret", "cls-a\x00", "~/secret"])
def test_path_traversal_ids_read_nothing_outside_the_store(url, model):
    from urllib.parse import quote

    resp = _post(url, "/v1/classify", {"model": model, "inputs": ["x"]})
    assert resp.status_code == 404, resp.text
    paths = [f"/v1/models/{quote(model, safe='')}"] + ([f"/v1/models/{model}"] if model.isprintable() else [])
    for path in paths:
        assert 400 <= requests.get(url + path, timeout=60).status_code < 500, path
    for route in ("/admin/adapters/", "/admin/aliases/"):
        resp = requests.delete(url + route + quote(model, safe=""), headers=AUTH, timeout=60)
        assert 400 <= resp.status_code < 500, resp.text
    resp = _post(url, "/admin/adapters", {"model": model}, headers=AUTH)
    assert resp.status_code == 404, resp.text


def test_bad_inputs_are_422_with_a_message(url):
    cases = [
        {"model": "cls-a", "inputs": ["x" * 40_000]},
        {"model": "cls-a", "inputs": [""]},
        {"model": "cls-a", "inputs": ["ok", 3]},
        {"model": "cls-a", "inputs": ["x"] * 600},
        {"model": ["cls-a"], "inputs": ["x"]},
    ]
    for body in cases:
        resp = _post(url, "/v1/classify", body)
        assert resp.status_code == 422 and resp.json()["error"]["message"].startswith("invalid request"), resp.text
    for path, body in [("/v1/completions", {"model": "chat-a", "prompt": "hi", "max_tokens": -5, "stream": True}),
                       ("/v1/chat/completions", {"model": "chat-a", "messages": [{"role": "user"}]}),
                       ("/admin/adapters", {"model": "cls-a", "warm": "later"})]:
        resp = _post(url, path, body, headers=AUTH)
        assert resp.status_code == 422, resp.text


def test_eval_ranks_served_models_and_promote_moves_production_under_traffic(url, store, tmp_path, capsys,
                                                                            tiny_llama):
    from rayft.cli import main
    from rayft.serve import Client
    from tests.support import tiny

    rows = tiny.sentiment_rows(48, seed=5)
    data = tmp_path / "heldout.csv"
    data.write_text("review,sentiment\n" + "".join(f"{r['review']},{r['sentiment']}\n" for r in rows))
    admin = Client(url, admin_token=TOKEN)
    admin.set_alias("production", "cls-b")
    ranking = tmp_path / "ranking.json"
    assert main(["eval", "--endpoint", url, "--data", str(data), "--text-column", "review",
                 "--label-column", "sentiment", "--output", str(ranking)]) == 0
    out = json.loads(ranking.read_text())
    scored = {s["model"]: s for s in out["ranking"]}
    assert {"cls-a", "cls-b", "merged-a"} <= set(scored) and "production" not in scored
    assert scored["cls-b"]["aliases"] == ["production"]
    gold = [r["sentiment"] for r in rows]
    for model in ("cls-a", "cls-b"):
        preds = [LABELS[i] for i in expected_probs(store, model, [r["review"] for r in rows]).argmax(-1)]
        want = sum(p == g for p, g in zip(preds, gold)) / len(gold)
        assert scored[model]["metrics"]["accuracy"] == pytest.approx(want)
    accs = [s["metrics"]["accuracy"] for s in out["ranking"] if s["metrics"]]
    assert accs == sorted(accs, reverse=True) and out["winner"] == out["ranking"][0]["model"]
    assert "held-out ranking" in capsys.readouterr().out
    chats = tmp_path / "chat.jsonl"
    chats.write_text("".join(json.dumps(r) + "\n" for r in tiny.chat_rows(4)))
    assert main(["eval", "--endpoint", url, "--data", str(chats), "--prompt-column", "prompt",
                 "--response-column", "response", "--max-tokens", "4", "--output", str(tmp_path / "chat.json")]) == 0
    chat_scores = {s["model"]: s for s in json.loads((tmp_path / "chat.json").read_text())["ranking"]}
    assert set(chat_scores) == {"chat-a", str(tiny_llama)}
    assert all(set(s["metrics"]) == {"exact_match", "token_f1"} and s["n"] == 4 for s in chat_scores.values())

    failures, answers, stop = [], [], threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            resp = _post(url, "/v1/classify", {"model": "production", "inputs": TEXTS[:2]})
            (answers if resp.status_code == 200 else failures).append(resp.status_code)

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        new = "cls-a" if out["winner"] != "cls-a" else "merged-a"
        assert main(["promote", "--endpoint", url, "--token", TOKEN, new]) == 0
        assert main(["promote", "--endpoint", url, "--token", TOKEN, "--ranking", str(ranking)]) == 0
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert not failures and answers
    assert Client(url, admin_token=TOKEN).aliases()["production"] == out["winner"]
    assert "production -> " in capsys.readouterr().out
    assert main(["promote", "--endpoint", url, "--token", "wrong-token-000000", "cls-a"]) == 2


def test_corrupt_result_fails_alone(url, store, tmp_path, tiny_bert):
    shutil.copytree(store.path("cls-a"), tmp_path / "copy")
    (tmp_path / "copy" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    m = store.manifest("cls-a")
    m.adapter_id = "corrupt"
    store.put(tmp_path / "copy", m)
    resp = _post(url, "/v1/classify", {"model": "corrupt", "inputs": ["x"]})
    assert resp.status_code == 500 and resp.json()["error"]["code"] == "model_load_error"
    assert "corrupt" in resp.json()["error"]["message"]
    assert _classify(url, "cls-b")["data"] and _classify(url, "merged-a")["data"]
