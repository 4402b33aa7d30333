"""The decode engine on a tiny Llama with LoRA, DoRA, prefix- and prompt-tuning adapters (random, non-zero)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from rayft.generate import (DecodeEngine, EngineConfig, EngineFull, EngineLoop, Request, RequestError,
                            SamplingParams, asyncio_sink)

ADAPTERS = {
    "lora-a": LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    "lora-b": LoraConfig(r=4, target_modules=["o_proj", "up_proj"]),
    "dora": LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True),
    "pfx": PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
    "soft": PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM"),
    "ia3-a": IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
    "ia3-b": IA3Config(target_modules=["v_proj", "down_proj"], feedforward_modules=["down_proj"]),
}
PROMPT_LEARNING = ("pfx", "soft")
WORDS = "the movie was a story and very fun with cast quite what is the capital of france".split()
GREEDY = SamplingParams(max_tokens=10, temperature=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls on a busy 2-core machine: one thread, no spinning OpenMP workers (30x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tiny_llama, tmp_path_factory):
    """The base folder, its tokenizer and one saved folder per adapter (weights drawn at random, scaled up)."""
    root = tmp_path_factory.mktemp("adapters")
    for i, (name, config) in enumerate(ADAPTERS.items()):
        torch.manual_seed(i)  # peft initialises adapters from the global generator: the same weights in any test order
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), config)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for _, param in filter(lambda item: item[1].requires_grad, model.named_parameters()):
                param.add_(torch.randn(param.shape, generator=gen) * 0.5)
        model.save_pretrained(root / name)
    return {"base": tiny_llama, "tok": AutoTokenizer.from_pretrained(tiny_llama), "root": root}


def base(world):
    return AutoModelForCausalLM.from_pretrained(world["base"]).eval()


def engine(world, names=("lora-a", "lora-b", "dora"), prompt=PROMPT_LEARNING, **limits) -> DecodeEngine:
    """An engine over one PeftModel holding ``names`` plus prompt-learning PeftModels on the same base weights."""
    model = PeftModel.from_pretrained(base(world), world["root"] / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(world["root"] / name, adapter_name=name)
    extra = {n: PeftModel.from_pretrained(model.get_base_model(), world["root"] / n, adapter_name=n) for n in prompt}
    config = EngineConfig(**{"max_running": 8, "step_tokens": 12, **limits})
    return DecodeEngine(model, world["tok"], config, prompt_adapters=extra)


def alone(world, adapter, prompt, max_new_tokens=GREEDY.max_tokens) -> list[int]:
    """Greedy tokens of plain ``generate`` on a fresh base with only ``adapter`` loaded (and active)."""
    model = base(world)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, world["root"] / adapter).eval()
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    eos = world["tok"].eos_token_id
    return out[: out.index(eos)] if eos in out else out


def prompt_ids(world, words: int) -> list[int]:
    return world["tok"](" ".join(WORDS[:words]))["input_ids"]


def drain(eng: DecodeEngine) -> int:
    steps = 0
    while eng.has_work():
        eng.step()
        steps += 1
    return steps


def test_mixed_batch_matches_each_request_alone(world):
    eng = engine(world)
    cases = [(None, 3), ("lora-a", 9), ("lora-b", 5), ("dora", 14), ("pfx", 7), ("soft", 11), ("lora-a", 4)]
    handles = [eng.add(Request(prompt_ids(world, n), GREEDY, adapter=a)) for a, n in cases]
    eng.step()
    assert set(eng._groups) == {("shared", None), ("solo", "dora")}  # LoRA, base and prompt learning share a forward
    drain(eng)
    assert set(eng._groups) == {("shared", None)}  # the solo group went with its last sequence
    assert eng._groups[("shared", None)].runner.gathered._weights  # LoRA rows ran gathered, not through peft's loop
    for (adapter, n), handle in zip(cases, handles):
        result = handle.result(timeout=0)
        choice = result.choices[0]
        assert list(choice.token_ids) == alone(world, adapter, prompt_ids(world, n)), adapter
        assert choice.text == world["tok"].decode(choice.token_ids, skip_special_tokens=True)
        assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (n, len(choice.token_ids))


def test_ia3_adapters_run_alone_and_base_rows_without_them(world):
    eng = engine(world, names=("ia3-a", "ia3-b"), prompt=())
    cases = [("ia3-a", 6), (None, 4), ("ia3-b", 9), ("ia3-a", 3)]
    handles = [eng.add(Request(prompt_ids(world, n), GREEDY, adapter=a)) for a, n in cases]
    drain(eng)
    for (adapter, n), handle in zip(cases, handles):
        assert list(handle.result(timeout=0).choices[0].token_ids) == alone(world, adapter, prompt_ids(world, n))


def test_request_joining_mid_batch_gets_the_same_tokens(world):
    eng = engine(world)
    first = [eng.add(Request(prompt_ids(world, n), GREEDY, adapter=a)) for a, n in (("lora-a", 12), (None, 5))]
    for _ in range(4):
        eng.step()
    assert eng.stats()["running"] == 2
    late = eng.add(Request(prompt_ids(world, 8), GREEDY, adapter="pfx"))
    drain(eng)
    assert list(late.result(timeout=0).choices[0].token_ids) == alone(world, "pfx", prompt_ids(world, 8))
    assert list(first[0].result(timeout=0).choices[0].token_ids) == alone(world, "lora-a", prompt_ids(world, 12))


def test_long_prompt_is_prefilled_in_chunks_while_others_decode(world):
    eng = engine(world, step_tokens=10)
    short = eng.add(Request(prompt_ids(world, 3), SamplingParams(max_tokens=4, temperature=0)))
    eng.step()  # the short prompt is prefilled: its first token is out
    long_prompt = prompt_ids(world, 16) * 3  # 48 tokens: six steps of chunks
    long = eng.add(Request(long_prompt, GREEDY, adapter="lora-b"))
    for _ in range(3):
        eng.step()
    done = short.result(timeout=0)  # it kept decoding one token per step meanwhile
    assert done.choices[0].finish_reason == "length" and len(done.choices[0].token_ids) == 4
    drain(eng)
    assert list(long.result(timeout=0).choices[0].token_ids) == alone(world, "lora-b", long_prompt)


def test_stop_string_spanning_two_tokens_ends_the_text_before_it(world):
    ids = prompt_ids(world, 6)
    free = alone(world, "lora-a", ids)
    words = [world["tok"].decode([t]) for t in free]
    k = 3  # the stop string: the end of the third word, the space and the start of the fourth
    stop = words[k - 1][-2:] + " " + words[k][:2]
    eng = engine(world)
    events = []
    eng.add(Request(ids, SamplingParams(max_tokens=10, temperature=0, stop=(stop,)), "lora-a", sink=events.append))
    drain(eng)
    full = world["tok"].decode(free)
    assert full.index(stop) == len(" ".join(words[:k])) - 2  # it first shows up across tokens k-1 and k
    text = "".join(e.text for e in events)
    assert stop not in text and all(stop not in e.text for e in events)
    assert text == full[: full.index(stop)]
    assert events[-1].finish_reason == "stop" and events[-1].usage.completion_tokens == k + 1
    assert [t for e in events for t in e.token_ids] == free[: k + 1]


def test_eos_and_context_end_a_choice(world):
    ids = prompt_ids(world, 6)
    free = alone(world, None, ids)
    config = EngineConfig(max_running=4, step_tokens=300)
    eng = DecodeEngine(base(world), world["tok"], config, eos_token_ids=[free[2]])
    stopped = eng.add(Request(ids, GREEDY))
    drain(eng)
    eng = DecodeEngine(base(world), world["tok"], config)
    near = eng.add(Request(ids * 42, GREEDY))  # 252 of the context's 256 positions: room for 4 tokens
    drain(eng)
    choice = stopped.result(timeout=0).choices[0]
    assert (list(choice.token_ids), choice.finish_reason) == (free[:2], "stop")
    result = near.result(timeout=0)
    assert result.choices[0].finish_reason == "length" and result.usage.completion_tokens == 4


def test_cancel_frees_the_slot_for_a_waiting_request(world):
    eng = engine(world, max_running=1, max_n=1)
    running = eng.add(Request(prompt_ids(world, 5), SamplingParams(max_tokens=200, temperature=0)))
    waiting = eng.add(Request(prompt_ids(world, 4), GREEDY, adapter="lora-a"))
    queued = eng.add(Request(prompt_ids(world, 4), GREEDY))
    for _ in range(3):
        eng.step()
    assert eng.stats() == {"running": 1, "waiting": 2}
    eng.cancel(running.request_id)
    eng.cancel(queued.request_id)
    eng.step()
    cancelled = running.result(timeout=0)
    assert cancelled.choices[0].finish_reason == "cancelled" and cancelled.usage.completion_tokens >= 3
    assert queued.result(timeout=0).choices[0].finish_reason == "cancelled"
    assert eng.stats() == {"running": 1, "waiting": 0}  # the waiting request took the slot
    assert eng._groups[("shared", None)].cache.rows == 1  # the cancelled row left the cache
    drain(eng)
    assert list(waiting.result(timeout=0).choices[0].token_ids) == alone(world, "lora-a", prompt_ids(world, 4))


def test_n_choices_with_a_seed_are_reproducible(world):
    def sample(seed):
        eng = engine(world)
        params = SamplingParams(max_tokens=8, temperature=1.5, top_k=20, top_p=0.95, seed=seed, n=2)
        handle = eng.add(Request(prompt_ids(world, 5), params, adapter="lora-b"))
        drain(eng)
        result = handle.result(timeout=0)
        assert result.usage.prompt_tokens == 5
        assert result.usage.completion_tokens == sum(len(c.token_ids) for c in result.choices)
        return [c.token_ids for c in result.choices]

    first = sample(7)
    assert first == sample(7)
    assert first[0] != first[1] and first != sample(8)


def test_bad_requests_and_a_full_queue_are_refused(world):
    eng = engine(world, max_queued=2)
    with pytest.raises(RequestError, match="adapter") as bad:
        eng.add(Request([5, 6], GREEDY, adapter="missing"))
    assert bad.value.field == "adapter" and bad.value.code == "model_not_found"
    with pytest.raises(RequestError, match=r"prompt.*256.*300 tokens") as long:
        eng.add(Request([5] * 300, GREEDY))
    assert long.value.code == "context_length_exceeded"
    with pytest.raises(RequestError, match="prompt.*256.*259 tokens"):
        eng.add(Request([5] * 256, GREEDY, adapter="pfx"))  # its 3 virtual tokens count too
    with pytest.raises(RequestError, match="n: at most 4"):
        eng.add(Request([5], SamplingParams(n=5)))
    eng.add(Request([5], GREEDY))
    eng.add(Request([5], GREEDY))
    with pytest.raises(EngineFull, match="queue"):
        eng.add(Request([5], GREEDY))


def test_a_failing_forward_ends_only_its_own_requests(world):
    eng = engine(world)
    good = eng.add(Request(prompt_ids(world, 4), GREEDY, adapter="lora-a"))
    bad = eng.add(Request(prompt_ids(world, 4), GREEDY, adapter="dora"))
    eng.step()
    solo = eng._groups[("solo", "dora")].runner
    solo.forward = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    drain(eng)
    failed = bad.result(timeout=0).choices[0]
    assert failed.finish_reason == "error"
    assert list(good.result(timeout=0).choices[0].token_ids) == alone(world, "lora-a", prompt_ids(world, 4))


def test_engine_loop_serves_threads_and_asyncio(world):
    eng = engine(world)
    cases = [("lora-a", 5), (None, 7), ("soft", 4)]

    async def client(loop_: EngineLoop, adapter, n):
        queue: asyncio.Queue = asyncio.Queue()
        loop_.add(Request(prompt_ids(world, n), GREEDY, adapter, sink=asyncio_sink(asyncio.get_running_loop(), queue)))
        tokens = []
        while True:
            event = await asyncio.wait_for(queue.get(), 20)
            tokens += event.token_ids
            if event.done:
                return tokens

    async def main(loop_):
        return await asyncio.gather(*(client(loop_, a, n) for a, n in cases))

    with EngineLoop(eng) as loop_:
        threaded = loop_.add(Request(prompt_ids(world, 6), GREEDY, "lora-b"))
        outputs = asyncio.run(main(loop_))
        assert list(threaded.result(timeout=20).choices[0].token_ids) == alone(world, "lora-b", prompt_ids(world, 6))
    assert outputs == [alone(world, a, prompt_ids(world, n)) for a, n in cases]
    assert not eng.has_work()


def test_stop_token_ids_end_a_choice_like_eos(world):
    ids = prompt_ids(world, 6)
    free = alone(world, None, ids)
    eng = DecodeEngine(base(world), world["tok"], EngineConfig(max_running=4, step_tokens=300))
    handle = eng.add(Request(ids, SamplingParams(max_tokens=10, temperature=0, stop_token_ids=(free[3],))))
    drain(eng)
    choice = handle.result(timeout=0).choices[0]
    assert (list(choice.token_ids), choice.finish_reason) == (free[:3], "stop")


def test_the_first_adapter_wraps_the_base_under_running_sequences(world):
    """What a server does when a base request runs and the first adapter arrives: peft wraps the base in place,
    the engine is pointed at the PeftModel, and the running base sequence goes on without any adapter."""
    model = base(world)
    eng = DecodeEngine(model, world["tok"], EngineConfig(max_running=4, step_tokens=300))
    plain = eng.add(Request(prompt_ids(world, 7), GREEDY))
    for _ in range(3):
        eng.step()
    peft = PeftModel.from_pretrained(model, world["root"] / "lora-a", adapter_name="lora-a")
    eng.set_model(peft)
    assert "lora-a" in eng.sources
    lora = eng.add(Request(prompt_ids(world, 5), GREEDY, adapter="lora-a"))
    drain(eng)
    assert list(plain.result(timeout=0).choices[0].token_ids) == alone(world, None, prompt_ids(world, 7))
    assert list(lora.result(timeout=0).choices[0].token_ids) == alone(world, "lora-a", prompt_ids(world, 5))


def test_metrics_count_tokens_latencies_and_finishes_in_prometheus_text(world):
    from prometheus_client.parser import text_string_to_metric_families

    from rayft.generate.metrics import GenerationMetrics, render_prometheus

    metrics = GenerationMetrics()
    config = EngineConfig(max_running=2, max_queued=3, step_tokens=300, max_n=1)
    eng = DecodeEngine(base(world), world["tok"], config, metrics=metrics)
    handles = [eng.add(Request(prompt_ids(world, n), GREEDY)) for n in (4, 6, 3)]
    with pytest.raises(EngineFull):
        eng.add(Request(prompt_ids(world, 3), GREEDY))
    drain(eng)
    results = [h.result(timeout=0) for h in handles]
    tokens = sum(r.usage.completion_tokens for r in results)
    snap = metrics.snapshot(running=0, queued=0)
    reasons = [r.choices[0].finish_reason for r in results]
    assert snap.tokens_generated == tokens and snap.rejected == 1
    assert snap.finished == {r: reasons.count(r) for r in set(reasons)}
    assert snap.prompt_tokens == sum(len(prompt_ids(world, n)) for n in (4, 6, 3))
    # one first token per request, then a gap per sampled token (an end-of-sequence token too, though not counted)
    assert snap.ttft.count == 3 and snap.itl.count == tokens - 3 + reasons.count("stop")
    text = render_prometheus({"r1": snap, "r2": snap}).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"rayft_generation_tokens", "rayft_requests_finished", "rayft_sequences_running",
            "rayft_time_to_first_token_seconds", "rayft_inter_token_latency_seconds",
            "rayft_adapter_evictions"} <= set(families)
    total = [s.value for s in families["rayft_generation_tokens"].samples if s.name.endswith("_total")]
    assert total == [snap.tokens_generated] * 2
    buckets = [s for s in families["rayft_time_to_first_token_seconds"].samples if s.name.endswith("_bucket")]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 3
