"""Generation through a real Serve app over HTTP: continuous batching across adapter kinds, joining mid-batch,
stop strings across tokens, disconnects, 429 under load, 4xx naming the field, /metrics, and train/serve parity.

The app runs with small limits (4 running sequences and 3 waiting requests per engine) so the tests can fill it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from rayft.cluster import free_port
from rayft.serve.metrics import PUSH_S
from tests.support.method_cases import method_params
from tests.support.serve_helpers import config, manifest, sft_adapter

pytestmark = pytest.mark.integration

LIMITS = {"max_running": 4, "max_queued": 3, "max_n": 2, "step_tokens": 32, "request_timeout_s": 120}
WORDS = "the movie was a story and very fun with cast quite what is the capital of france".split()
SYSTEM = "be a terse helper"


def _peft(base, out, cfg, seed):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # far from identity, so every adapter answers differently
        for _, param in filter(lambda item: item[1].requires_grad, model.named_parameters()):
            param.add_(torch.randn(param.shape, generator=gen) * 0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama, chat_jsonl):
    """A store with LoRA, DoRA, IA3, prompt-tuning and full-weight SFT results, and one with a system prompt."""
    from peft import IA3Config, LoraConfig, PromptTuningConfig
    from transformers import AutoTokenizer

    from rayft.config.schema import ExperimentConfig
    from rayft.models import resolve_model
    from rayft.store import AdapterStore
    from rayft.tasks.prompt_format import PromptFormat
    from tests.support import cls_config

    tmp = tmp_path_factory.mktemp("gen")
    raw = cls_config(tiny_llama, chat_jsonl, tmp, task={"name": "sft"})
    raw["data"].update(text_column=None, label_column=None, prompt_column="prompt", response_column="response")
    cfg = config(raw)
    store = AdapterStore(tmp / "store")
    methods = {"ia3": {"name": "ia3", "target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
               "prompt": {"name": "prompt", "num_virtual_tokens": 3}}

    def put(name, folder, method="lora", **kw):
        own = config({**raw, "method": methods[method]}) if method in methods else cfg
        store.put(folder, manifest(name, tiny_llama, "sft", own, method=method, **kw))
    put("chat-a", sft_adapter(tiny_llama, tmp / "chat-a"))
    put("chat-b", _peft(tiny_llama, tmp / "chat-b", LoraConfig(r=4, target_modules=["o_proj", "up_proj"]), 5))
    put("dora", _peft(tiny_llama, tmp / "dora", LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                           use_dora=True), 6), "dora")
    put("ia3", _peft(tiny_llama, tmp / "ia3", IA3Config(target_modules=["k_proj", "down_proj"],
                                                        feedforward_modules=["down_proj"]), 7), "ia3",
        hot_swappable=False)
    put("soft", _peft(tiny_llama, tmp / "soft", PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"), 8),
        "prompt", hot_swappable=False)
    put("full", merged_model_lm(tiny_llama, tmp / "chat-a", tmp / "full"), "full", kind="full")
    for name in TRAINED_BY_RAYFT:  # the other generating methods, built and saved by rayft's own method code
        folder, kind = _method_result(tiny_llama, tmp / name, name)
        own = config({**raw, "method": {"name": name, **method_params(name, "llama")}})
        store.put(folder, manifest(name, tiny_llama, "sft", own, method=name, kind=kind, hot_swappable=False))
    smol = resolve_model("smollm2-135m")  # a real model, slow enough on a CPU to hang up mid-answer
    smol_raw = cls_config(Path(smol), chat_jsonl, tmp, task={"name": "sft"})
    smol_raw["data"].update(text_column=None, label_column=None, prompt_column="prompt", response_column="response")
    store.put(_peft(smol, tmp / "smol", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), 10),
              manifest("smol", Path(smol), "sft", config(smol_raw)))
    raw["data"]["system_prompt"] = SYSTEM  # trained with a system prompt: the manifest records its rendering
    sys_cfg = config(raw)
    fmt = PromptFormat.of_training(AutoTokenizer.from_pretrained(tiny_llama), ExperimentConfig.model_validate(sys_cfg))
    store.put(sft_adapter(tiny_llama, tmp / "sys", seed=9),
              manifest("sys", tiny_llama, "sft", sys_cfg, prompt_format=fmt.to_dict()))
    return store


TRAINED_BY_RAYFT = ("prefix", "ptuning", "adapter", "qlora")


def _method_result(base, out, name):
    """A result of method ``name`` on the tiny Llama (weights drawn at random), saved as rayft exports it."""
    from transformers import AutoModelForCausalLM

    from rayft.methods import METHODS

    method = METHODS.get(name)
    params = method.params.model_validate(method_params(name, "llama"))
    torch.manual_seed(11)
    model = method.apply(AutoModelForCausalLM.from_pretrained(base), params, "CAUSAL_LM")
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _, param in filter(lambda item: item[1].requires_grad and item[1].is_floating_point(),
                               model.named_parameters()):
            param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * 0.5)
    if method.artifact == "modules":
        method.save(model, str(out))
        return out, "modules"
    model.save_pretrained(out)
    return out, "adapter"


def merged_model_lm(base, adapter, out):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload() \
        .save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def url(ray_local, served):
    import rayft.serve

    base_url = rayft.serve.start(str(served.root), port=free_port(), max_adapters=8, **LIMITS)
    yield base_url
    rayft.serve.shutdown()


def _complete(url, model, prompt, max_tokens=12, **extra):
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    return requests.post(url + "/v1/completions", json=body, timeout=120)


def _complete_retrying(url, model, prompt, **extra):
    """:func:`_complete`, sent again after the Retry-After of a 429 (the server at capacity), as a client does."""
    for _ in range(60):
        resp = _complete(url, model, prompt, **extra)
        if resp.status_code != 429:
            return resp
        time.sleep(float(resp.headers.get("Retry-After", 1)))
    return resp


def _text(resp) -> tuple[str, str, int]:
    assert resp.status_code == 200, resp.text
    out = resp.json()
    return out["choices"][0]["text"], out["choices"][0]["finish_reason"], out["usage"]["completion_tokens"]


def _prompt(words: int) -> str:
    return " ".join(WORDS[:words])


CASES = [("chat-a", 3), ("chat-b", 9), ("dora", 14), ("TINY", 5), ("ia3", 7), ("soft", 11), ("full", 6),
         ("chat-a", 12), ("prefix", 8), ("ptuning", 4), ("adapter", 10), ("qlora", 6)]


def test_mixed_batch_equals_each_request_alone(url, served, tiny_llama):
    cases = [(str(tiny_llama) if m == "TINY" else m, n) for m, n in CASES]
    alone = [_text(_complete(url, m, _prompt(n))) for m, n in cases]
    assert len({a[0] for a in alone}) >= 8  # the adapters really answer differently
    with ThreadPoolExecutor(len(cases)) as pool:  # more than the 4 running + 3 queued slots: 429s are retried
        together = list(pool.map(lambda c: _text(_complete_retrying(url, c[0], _prompt(c[1]))), cases))
    assert together == alone
    # and served alone is what plain peft generates in process (greedy, the same prompt ids)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(served.path("chat-a")))
    model.eval()
    ids = torch.tensor([tok(_prompt(3))["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert alone[0][0] == tok.decode([t for t in out if t != tok.eos_token_id], skip_special_tokens=True)


def _stream(url, body, stop_after=None):
    """(pieces of text, finish reasons, usage) of a streamed completion; ``stop_after`` pieces: hang up."""
    texts, finishes, usage = [], [], None
    with requests.post(url + "/v1/completions", json={**body, "stream": True}, stream=True, timeout=120) as resp:
        assert resp.status_code == 200, resp.text
        for line in resp.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk["choices"]:
                texts.append(choice["text"])
                if choice["finish_reason"]:
                    finishes.append(choice["finish_reason"])
            if stop_after is not None and len(texts) >= stop_after:
                break  # leaving the with block closes the connection mid-stream
    return texts, finishes, usage


def test_request_joining_mid_batch_gets_its_own_answer(url):
    want_long = _text(_complete(url, "chat-a", _prompt(4), max_tokens=80))
    want_short = _text(_complete(url, "chat-b", _prompt(8)))
    got = {}

    def long() -> None:
        texts, finishes, usage = _stream(url, {"model": "chat-a", "prompt": _prompt(4), "max_tokens": 80,
                                               "temperature": 0, "stream_options": {"include_usage": True}})
        got["long"] = ("".join(texts), finishes[-1], usage["completion_tokens"])

    thread = threading.Thread(target=long)
    thread.start()
    time.sleep(0.3)  # the long answer is being decoded when the short request joins
    got["short"] = _text(_complete(url, "chat-b", _prompt(8)))
    thread.join(120)
    assert got == {"long": want_long, "short": want_short}


def test_stop_string_spanning_two_tokens_ends_the_answer_before_it(url):
    text, _, _ = _text(_complete(url, "chat-a", _prompt(6), max_tokens=20))
    words = text.split(" ")
    assert len(words) >= 4
    stop = words[1][-2:] + " " + words[2][:1]  # the end of one token, the space, the start of the next
    cut = text.index(stop)
    out = _text(_complete(url, "chat-a", _prompt(6), max_tokens=20, stop=[stop]))
    assert out[0] == text[:cut] and out[1] == "stop"
    texts, finishes, _ = _stream(url, {"model": "chat-a", "prompt": _prompt(6), "max_tokens": 20, "temperature": 0,
                                       "stop": stop})
    assert "".join(texts) == text[:cut] and finishes == ["stop"]


def _metrics(url) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    resp = requests.get(url + "/metrics", timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            key = sample.name + "".join(f"[{v}]" for k, v in sorted(sample.labels.items()) if k != "replica")
            out[key] = out.get(key, 0) + sample.value
    return out


def _wait_for(check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_a_client_that_disconnects_frees_its_slot(url):
    """On smollm2-135m (about 12 tokens/s here: 200 tokens would take over 15 s; the tiny model would finish before
    the hang-up reaches the replica) the sequence is cancelled a few tokens after the client leaves."""
    time.sleep(2 * PUSH_S + 0.5)  # the figures of earlier tests have reached the board
    before = _metrics(url)
    texts, finishes, _ = _stream(url, {"model": "smol", "prompt": "The capital of France is", "max_tokens": 200,
                                       "temperature": 0}, stop_after=1)
    assert len(texts) == 1 and not finishes
    cancelled = "rayft_requests_finished_total[cancelled]"
    after = _wait_for(lambda: (m := _metrics(url)).get(cancelled, 0) > before.get(cancelled, 0) and m, timeout=60)
    assert after, "the disconnected request was not cancelled"
    made = after["rayft_generation_tokens_total"] - before.get("rayft_generation_tokens_total", 0)
    assert 1 <= made < 100  # decoding stopped soon after the client left, far from max_tokens
    assert _wait_for(lambda: _metrics(url).get("rayft_sequences_running", 1) == 0)
    assert _text(_complete(url, "chat-a", _prompt(3)))[2] > 0  # and the server goes on answering


def test_full_server_answers_429_and_keeps_serving_the_admitted(url):
    def one(i: int) -> requests.Response:
        return _complete(url, "chat-a", _prompt(2 + i % 5), max_tokens=200)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    refused = [r for r in answers if r.status_code == 429]
    served = [r for r in answers if r.status_code == 200]
    assert refused and served and len(refused) + len(served) == 16
    for r in refused:
        assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "queue_full"
    for r in served:
        assert r.json()["usage"]["completion_tokens"] > 0
    assert requests.get(url + "/healthz", timeout=30).ok


@pytest.mark.parametrize("body,status,names", [
    ({"max_tokens": 0}, 422, ["max_tokens"]),
    ({"max_tokens": 300}, 400, ["max_tokens", "300", "256"]),
    ({"prompt": " ".join(["the"] * 300)}, 400, ["prompt", "300", "256"]),
    ({"temperature": -0.5}, 422, ["temperature"]),
    ({"top_p": 0}, 422, ["top_p"]),
    ({"top_p": 1.5}, 422, ["top_p"]),
    ({"n": 3}, 400, ["n", "3", "at most 2"]),
    ({"model": "no-such-model"}, 404, ["no-such-model"]),
])
def test_bad_requests_are_json_4xx_naming_the_field(url, body, status, names):
    resp = requests.post(url + "/v1/completions", json={"model": "chat-a", "prompt": "the movie", **body}, timeout=60)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert all(name in error["message"] for name in names), error


def test_n_seeded_choices_and_exact_usage(url):
    body = {"model": "chat-a", "prompt": _prompt(5), "max_tokens": 6, "temperature": 1.0, "n": 2, "seed": 3}
    first = requests.post(url + "/v1/completions", json=body, timeout=60).json()
    again = requests.post(url + "/v1/completions", json=body, timeout=60).json()
    assert [c["index"] for c in first["choices"]] == [0, 1]
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]
    single = requests.post(url + "/v1/completions", json={**body, "n": 1}, timeout=60).json()
    assert first["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]  # the prompt once, not per choice
    assert first["usage"]["completion_tokens"] <= 12


def test_metrics_count_tokens_latencies_and_loads(url):
    _text(_complete(url, "chat-b", _prompt(4)))
    figures = _wait_for(lambda: (m := _metrics(url)).get("rayft_generation_tokens_total", 0) > 0 and m)
    assert figures["rayft_generation_tokens_total"] > 0 and figures["rayft_prompt_tokens_total"] > 0
    assert figures["rayft_time_to_first_token_seconds_count"] > 0
    assert figures["rayft_inter_token_latency_seconds_count"] > 0
    assert figures["rayft_adapter_loads_total"] >= 1 and "rayft_sequences_queued" in figures
    assert figures["rayft_requests_finished_total[length]"] > 0


def test_chat_renders_as_training_did(url, served, tiny_llama):
    """The adapter trained with a system prompt: the served chat prompt is training's rendering, token for token,
    and the answer is what plain peft generates from it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayft.config.schema import ExperimentConfig
    from rayft.tasks.sft import render_prompt

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    cfg = ExperimentConfig.model_validate(served.manifest("sys").config)
    ids = render_prompt(tok, "what is the capital of france", cfg.data.system_prompt)
    assert tok.convert_tokens_to_ids("<|system|>") in ids
    body = {"model": "sys", "messages": [{"role": "user", "content": "what is the capital of france"}],
            "max_tokens": 8, "temperature": 0}
    out = requests.post(url + "/v1/chat/completions", json=body, timeout=60).json()
    assert out["usage"]["prompt_tokens"] == len(ids)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(served.path("sys")))
    x = torch.tensor([ids])
    new = model.eval().generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False,
                                pad_token_id=0)[0, len(ids):].tolist()
    stops = {tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")}
    end = next((i for i, t in enumerate(new) if t in stops), len(new))
    assert out["choices"][0]["message"]["content"] == tok.decode(new[:end], skip_special_tokens=True)


def test_eval_sends_prompts_concurrently_and_keeps_their_order(url):
    """rayft eval's scoring of an sft model: 16 chats in flight against 4 running + 3 queued slots, so some are
    refused with 429 and sent again after Retry-After; every answer still lands on its own prompt."""
    from rayft.serve import Client
    from rayft.serve.evaluate import Heldout, score_model

    client = Client(url, timeout=120)
    prompts = [_prompt(2 + i % 12) + f" {WORDS[i % len(WORDS)]}" for i in range(20)]
    gold = [client.chat("chat-b", [{"role": "user", "content": p}], max_tokens=6)["choices"][0]["message"]["content"]
            for p in prompts]
    card = next(c for c in client.models() if c["id"] == "chat-b")
    score = score_model(client, card, Heldout(prompts, gold, "prompts", task="sft"), max_tokens=6)
    assert score.error is None and score.n == 20 and score.metrics["exact_match"] == 1.0
