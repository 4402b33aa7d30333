"""The serving contract without Ray: request validation, error shapes, the catalog, and the model pool."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from rayft.serve.api import (BASE_PREFIX, ChatRequest, ClassifyRequest, CompletionRequest, ServeError,
                             build_catalog, chat_response, classification_response, completion_response, error_body,
                             Completion, GeneratedChoice, RETRY_AFTER_S, TokenUsage, request_refused,
                             models_response, require_task, resolve, validation_error)
from rayft.store import Manifest
from tests.support import REPO


def _manifest(adapter_id: str, task: str = "sequence_classification", base: str = "minilm-l6", **kw) -> Manifest:
    return Manifest(adapter_id=adapter_id, kind=kw.pop("kind", "adapter"), base_model=base, base_fingerprint="f",
                    method="lora", task=task, labels=["neg", "pos"] if task != "sft" else None,
                    metrics={"eval_accuracy": 0.8}, config={}, created="2026-11-01T10:00:00Z", **kw)


def _errors(model_cls, body) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        model_cls.model_validate(body)
    return info.value.errors()


@pytest.mark.parametrize("body", [
    {"inputs": ["x"]},
    {"model": "", "inputs": ["x"]},
    {"model": "a", "inputs": []},
    {"model": "a", "inputs": "x"},
    {"model": "a", "inputs": [1]},
    {"model": 3, "inputs": ["x"]},
    {"model": "a", "inputs": ["x"], "extra": 1},
])
def test_classify_request_rejects(body):
    assert _errors(ClassifyRequest, body)


def test_completion_request_defaults_and_limits():
    req = CompletionRequest.model_validate({"model": "m", "prompt": "hi", "user": "ignored", "logprobs": None})
    assert (req.max_tokens, req.temperature, req.stop) == (16, 1.0, None)
    assert CompletionRequest.model_validate({"model": "m", "prompt": "hi", "stop": "\n"}).stop == ["\n"]
    for bad in [{"max_tokens": -1}, {"max_tokens": 0}, {"max_tokens": "many"}, {"temperature": 3}, {"n": 0},
                {"top_p": 0}, {"top_p": 1.5}, {"temperature": -0.1}, {"top_k": -1},
                {"stream": "sometimes"}, {"prompt": ""}, {"prompt": []}, {"stop": [""]}, {"prompt": "x" * 40_000},
                {"prompt": ["ok", "x" * 40_000]}]:
        assert _errors(CompletionRequest, {"model": "m", "prompt": "hi", **bad}), bad
    params = CompletionRequest.model_validate({"model": "m", "prompt": "hi", "n": 3, "top_k": 5, "seed": 1,
                                               "stop": ["a", "b"]}).params(7)
    assert (params.max_tokens, params.n, params.top_k, params.seed, params.stop) == (7, 3, 5, 1, ("a", "b"))


def test_chat_request_messages():
    req = ChatRequest.model_validate({"model": "m", "max_completion_tokens": 5, "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}]})
    assert req.plain_messages() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert req.limit() == 5 and req.params(req.limit()).max_tokens == 5
    assert _errors(ChatRequest, {"model": "m", "messages": []})
    assert _errors(ChatRequest, {"model": "m", "messages": [{"role": "robot", "content": "x"}]})


def test_validation_error_names_fields_and_malformed_json():
    err = validation_error(_errors(ClassifyRequest, {"inputs": []}))
    assert err.status == 422 and err.code == "validation_error"
    assert "model" in err.message and "inputs" in err.message
    bad_json = validation_error([{"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error",
                                  "ctx": {"error": "Expecting value"}}])
    assert "malformed JSON" in bad_json.message


def test_error_shape_round_trips():
    err = ServeError(404, "gone", "invalid_request_error", "model_not_found")
    assert err.body() == error_body("gone", "invalid_request_error", "model_not_found")
    assert set(err.body()["error"]) == {"message", "type", "code", "param"}
    again = ServeError(**json.loads(json.dumps(err.to_dict())))
    assert (again.status, again.message, again.code) == (404, "gone", "model_not_found")


def test_catalog_lists_adapters_and_sft_bases():
    cat = build_catalog([_manifest("cls-a"), _manifest("chat", task="sft", base="smollm2-135m")])
    assert set(cat) == {"cls-a", "chat", "smollm2-135m"}
    assert cat["cls-a"].key == "cls-a@2026-11-01T10:00:00Z" and cat["cls-a"].created > 0
    assert cat["smollm2-135m"].kind == "base" and cat["smollm2-135m"].key == BASE_PREFIX + "smollm2-135m"
    card = models_response(cat)["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "rayft" and card["metrics"] == {"eval_accuracy": 0.8}


@pytest.mark.parametrize("model", ["nope", "../etc", "a/../../b", "/etc/passwd", "..", "x" * 300])
def test_resolve_unknown_or_invalid_is_404(model):
    with pytest.raises(ServeError) as info:
        resolve(build_catalog([_manifest("cls-a")]), model)
    assert info.value.status == 404 and info.value.code == "model_not_found"


def test_require_task_is_400():
    entry = build_catalog([_manifest("chat", task="sft")])["chat"]
    with pytest.raises(ServeError) as info:
        require_task(entry, "sequence_classification", "/v1/classify")
    assert info.value.status == 400 and "sft" in info.value.message


def test_response_shapes():
    out = Completion((GeneratedChoice(0, "paris", "stop"), GeneratedChoice(1, "lyon", "length")), TokenUsage(3, 2))
    comp = completion_response("m", out)
    assert comp["object"] == "text_completion" and [c["text"] for c in comp["choices"]] == ["paris", "lyon"]
    assert comp["choices"][1] == {"text": "lyon", "index": 1, "logprobs": None, "finish_reason": "length"}
    assert comp["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    chat = chat_response("m", out)
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "paris"}
    assert chat["choices"][1]["index"] == 1


def test_refused_generation_requests_name_the_field_and_a_full_queue_is_429():
    from rayft.generate.params import RequestError

    bad = request_refused(RequestError("n", 9, "at most 4 (this engine's limit)"))
    assert (bad.status, bad.body()["error"]["param"], bad.headers()) == (400, "n", None)
    assert "n" in bad.message and "9" in bad.message and "at most 4" in bad.message
    full = request_refused(RequestError("queue", 64, "fewer than 64 waiting requests", "queue_full"))
    assert full.status == 429 and full.headers() == {"Retry-After": str(RETRY_AFTER_S)}
    assert ServeError(**full.to_dict()).headers() == full.headers()  # survives the trip from replica to gateway
    cls = classification_response("m", [{"label": "pos", "probabilities": {"neg": 0.1, "pos": 0.9}}])
    assert cls["data"][0] == {"index": 0, "label": "pos", "probabilities": {"neg": 0.1, "pos": 0.9}}


def test_app_builder_rejects_bad_args(tmp_path):
    pytest.importorskip("ray.serve")
    from rayft.errors import StoreError
    from rayft.serve.app import app_builder

    with pytest.raises(ValueError, match="max_adapters"):
        app_builder({"store": str(tmp_path), "max_adapters": 0})
    with pytest.raises(ValueError, match="stor"):
        app_builder({"stor": str(tmp_path)})
    with pytest.raises(StoreError):
        app_builder({"store": str(tmp_path / "missing")})


def test_model_pool_hot_swaps_and_evicts(tmp_path, tiny_bert, sentiment_csv):
    """Adapters share one base; closing (what Serve's LRU eviction calls) deletes them, never the last one."""
    import torch
    from tests.support import cls_config
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rayft.config.schema import ExperimentConfig
    from rayft.models import fingerprint
    from rayft.serve import infer, runtime
    from rayft.store import AdapterStore
    from rayft.tasks.sequence_classification import predict_proba

    store, texts = AdapterStore(tmp_path / "store"), ["great fun", "dull and boring"]
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    config = ExperimentConfig.model_validate(cls_config(tiny_bert, sentiment_csv, tmp_path)).model_dump(mode="json")
    for seed, name in enumerate(["a.1", "b"]):
        torch.manual_seed(seed)
        base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
        lora = LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"], init_lora_weights=False)
        get_peft_model(base, lora).save_pretrained(tmp_path / name)
        store.put(tmp_path / name, Manifest(name, "adapter", str(tiny_bert), fingerprint(str(tiny_bert)), "lora",
                                            "sequence_classification", ["neg", "pos"], {}, config, max_length=32))
    want = {}
    for name in ("a.1", "b"):  # plain peft (load_for_inference names the adapter by its id: no dots allowed)
        base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
        want[name] = predict_proba(PeftModel.from_pretrained(base, store.path(name)).eval(), tok, texts, 32)
    pool = runtime.ModelPool(store)

    def probs(loaded):
        rows = infer.classify(loaded, texts)
        return torch.tensor([[r["probabilities"]["neg"], r["probabilities"]["pos"]] for r in rows])

    a, b = pool.load("a.1@x"), pool.load("b@x")
    assert len(pool.bases) == 1 and a.entry is b.entry
    assert torch.allclose(probs(a), want["a.1"], atol=1e-5) and torch.allclose(probs(b), want["b"], atol=1e-5)
    a.__del__()  # what Serve calls on LRU eviction
    assert a.run(lambda lm, m: 1) is runtime.EVICTED and list(b.entry.peft.peft_config) == [b.adapter]
    b.__del__()  # the last adapter is retired (peft cannot delete it), then dropped on the next load
    again = pool.load("a.1@y")
    assert list(again.entry.peft.peft_config) == [again.adapter]
    assert torch.allclose(probs(again), want["a.1"], atol=1e-5)
    with pytest.raises(ServeError) as info:
        pool.load("missing@x")
    assert info.value.status == 404


def test_shipped_serve_config_is_valid():
    pytest.importorskip("ray.serve")
    import importlib
    
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from rayft.serve.app import AppArgs, app_builder

    path = REPO / "serving" / "app.yaml"
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = config.applications
    module, attr = app.import_path.split(":")
    assert getattr(importlib.import_module(module), attr) is app_builder
    assert AppArgs.model_validate(app.args).max_adapters >= 1
    assert (config.http_options.host, app.route_prefix) == ("127.0.0.1", "/")


def test_model_pool_loads_full_models(tmp_path, tiny_bert, sentiment_csv):
    import torch
    from tests.support import cls_config
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rayft.config.schema import ExperimentConfig
    from rayft.serve import infer, runtime
    from rayft.store import AdapterStore
    from rayft.tasks.sequence_classification import predict_proba

    config = ExperimentConfig.model_validate(cls_config(tiny_bert, sentiment_csv, tmp_path)).model_dump(mode="json")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model.save_pretrained(tmp_path / "full")
    tok.save_pretrained(tmp_path / "full")
    store = AdapterStore(tmp_path / "store")
    store.put(tmp_path / "full", Manifest("full-ft", "full", str(tiny_bert), "", "full", "sequence_classification",
                                          ["neg", "pos"], {}, config, max_length=32))
    loaded = runtime.ModelPool(store).load("full-ft@x")
    rows = infer.classify(loaded, ["great fun"])
    assert rows[0]["label"] in ("neg", "pos")
    want = predict_proba(model, tok, ["great fun"], 32)[0]
    assert torch.allclose(torch.tensor(list(rows[0]["probabilities"].values())), want, atol=1e-5)
    loaded.__del__()
    assert loaded.model is None and loaded.run(lambda lm, m: 1) is runtime.EVICTED


def test_serving_defaults_have_one_source():
    """The CLI, ``rayft.serve.start``, ``build_app``, the Serve config arguments, the model deployment and the
    client all take their defaults from ``rayft.serve.defaults``."""
    pytest.importorskip("ray.serve")
    import inspect

    from rayft.cli import build_parser
    from rayft.serve import Client, defaults, start, wait_until_healthy
    from rayft.serve.app import AppArgs, build_app
    from rayft.serve.catalog import Catalog
    from rayft.serve.evaluate import evaluate_endpoint, score_model
    from rayft.serve.replica import ModelServer

    def params(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    want = {"max_adapters": defaults.MAX_ADAPTERS, "num_replicas": defaults.NUM_REPLICAS, "name": defaults.APP_NAME,
            "num_cpus": defaults.NUM_CPUS, "catalog_ttl": defaults.CATALOG_TTL_S,
            "max_batch_size": defaults.MAX_BATCH_SIZE, "batch_wait_ms": defaults.BATCH_WAIT_MS}
    assert {k: AppArgs.model_fields[k].default for k in want} == want
    assert {k: params(build_app)[k] for k in want} == want
    server = params(ModelServer.func_or_class.__init__)
    assert (server["max_adapters"], server["max_batch_size"], server["batch_wait_s"] * 1000) == \
        (defaults.MAX_ADAPTERS, defaults.MAX_BATCH_SIZE, defaults.BATCH_WAIT_MS)
    assert ModelServer.ray_actor_options["num_cpus"] == defaults.NUM_CPUS
    assert params(Catalog.__init__)["ttl"] == defaults.CATALOG_TTL_S
    assert {k: params(start)[k] for k in ("host", "port", "name", "timeout")} == {
        "host": defaults.HOST, "port": defaults.PORT, "name": defaults.APP_NAME, "timeout": defaults.START_TIMEOUT_S}
    assert params(wait_until_healthy)["timeout"] == defaults.START_TIMEOUT_S
    assert "blocking" not in params(start)
    assert params(Client.__init__)["base_url"] == defaults.URL == f"http://{defaults.HOST}:{defaults.PORT}"
    cli = build_parser().parse_args(["serve"])
    assert (cli.host, cli.port, cli.max_adapters, cli.replicas, cli.max_batch_size) == (
        defaults.HOST, defaults.PORT, defaults.MAX_ADAPTERS, defaults.NUM_REPLICAS, defaults.MAX_BATCH_SIZE)
    for argv, dest in [(["eval", "--data", "d.csv"], "endpoint"), (["promote"], "endpoint"), (["query", "x"], "url")]:
        assert getattr(build_parser().parse_args(argv), dest) == defaults.URL
    scoring = build_parser().parse_args(["eval", "--data", "d.csv"])
    assert (scoring.batch_size, scoring.max_tokens) == (defaults.EVAL_BATCH_SIZE, defaults.CHAT_MAX_TOKENS)
    assert build_parser().parse_args(["query", "x"]).max_tokens == defaults.COMPLETION_MAX_TOKENS
    assert (params(Client.complete)["max_tokens"], params(Client.chat)["max_tokens"]) == (
        defaults.COMPLETION_MAX_TOKENS, defaults.CHAT_MAX_TOKENS)
    for fn in (score_model, evaluate_endpoint):
        assert (params(fn)["batch_size"], params(fn)["max_tokens"]) == (defaults.EVAL_BATCH_SIZE,
                                                                        defaults.CHAT_MAX_TOKENS)
