"""The HTTP generation benchmark's bookkeeping: reading a stream, per-request timing, the case summary, the
ratios and goals, and the adapter store it serves (built on the tiny Llama, no server)."""

import pytest

from tests.support.benchmark_module import load


@pytest.fixture(scope="module")
def bench():
    return load("generation")


def chunk(text=None, usage=None):
    import json

    body = {"object": "text_completion", "choices": [] if text is None else [{"index": 0, "text": text}]}
    if usage:
        body["usage"] = usage
    return "data: " + json.dumps(body)


def test_a_stream_stamps_only_chunks_with_text_and_keeps_the_usage(bench):
    clock = iter([1.0, 1.5, 1.75]).__next__
    lines = [chunk("Hello"), "", chunk(""), chunk(" wor"), ": keep-alive", chunk("ld"),
             chunk(usage={"prompt_tokens": 3, "completion_tokens": 4}), "data: [DONE]", chunk("after the end")]
    read = bench.read_stream(lines, clock)
    assert read == {"stamps": [1.0, 1.5, 1.75], "usage": {"prompt_tokens": 3, "completion_tokens": 4},
                    "error": None}
    result = bench.request_result(0.25, read)
    assert result["ttft_s"] == 0.75 and result["gaps_s"] == [0.5, 0.25]
    assert result["tokens"] == 4 and result["error"] is None


def test_an_error_chunk_or_a_stream_without_usage_is_a_failed_request(bench):
    err = bench.read_stream(['data: {"error": {"message": "the model server stopped", "code": null}}'])
    assert err["error"] == "the model server stopped"
    assert bench.request_result(0.0, err)["error"] == "the model server stopped"
    no_usage = bench.read_stream([chunk("x")], clock=lambda: 1.0)
    assert bench.request_result(0.0, no_usage)["error"] == "no usage chunk"
    assert bench.request_result(0.0, bench.read_stream([]))["error"] == "no text"


def test_a_case_sums_tokens_over_wall_time_and_takes_nearest_rank_percentiles(bench):
    ok = [{"ttft_s": 0.1 * (i + 1), "gaps_s": [0.01 * (i + 1)] * 2, "tokens": 10, "error": None, "retries": 0}
          for i in range(20)]
    bad = {"ttft_s": None, "gaps_s": [], "tokens": 0, "error": "HTTP 500: boom", "retries": 2}
    out = bench.summarize(ok + [bad], wall=4.0)
    assert out["requests"] == 21 and out["errors"] == 1 and out["first_error"] == "HTTP 500: boom"
    assert out["completion_tokens"] == 200 and out["tokens_per_s"] == 50.0 and out["retries_429"] == 2
    assert out["ttft_p50_s"] == pytest.approx(1.1) and out["ttft_p95_s"] == pytest.approx(1.9)  # ranks 10, 18 of 0..19
    assert out["itl_p50_ms"] == pytest.approx(110.0) and out["itl_p95_ms"] == pytest.approx(190.0)


def test_ratios_and_goals_follow_the_issue(bench):
    case = {"a": 100.0, "b": 79.0, "c": 20.0, "d": 120.0}
    report = {k: {"tokens_per_s": v} for k, v in case.items()}
    report["a"]["ttft_p95_s"], report["idle"] = 0.9, {"ttft_p95_s": 0.3}
    ratios, goals = bench.ratios_and_goals(report)
    assert ratios == {"a_over_c": 5.0, "a_over_d": 0.833, "b_over_a": 0.79, "ttft_p95_loaded_over_idle": 3.0}
    assert goals == {"a_over_c_min_5": True, "a_over_d_min_0.8": True, "b_over_a_min_0.8": False,
                     "ttft_p95_loaded_over_idle_max_3": True}


def test_the_store_holds_distinct_sft_lora_adapters_with_real_manifests(bench, tiny_llama, tmp_path):
    import torch
    from safetensors.torch import load_file

    from rayft.models import fingerprint

    store = bench.build_store(tmp_path, 2, bench.experiment(str(tiny_llama)))
    manifests = {m.adapter_id: m for m in store.list()}
    assert sorted(manifests) == ["a00", "a01"]
    for m in manifests.values():
        assert (m.kind, m.task, m.method, m.base_model) == ("adapter", "sft", "lora", str(tiny_llama))
        assert m.base_fingerprint == fingerprint(str(tiny_llama)) and m.swappable
        assert m.config["method"]["target_modules"] == ["q_proj", "v_proj"]
    weights = [load_file(store.path(a) / "adapter_model.safetensors") for a in ("a00", "a01")]
    b_keys = [k for k in weights[0] if "lora_B" in k]
    assert b_keys and all(weights[0][k].abs().sum() > 0 for k in b_keys)
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in b_keys)


def test_a_case_without_figures_gives_no_ratio_and_misses_its_goal(bench):
    report = {k: {"tokens_per_s": v, "ttft_p95_s": float("nan")} for k, v in
              {"a": 10.0, "b": 10.0, "c": 0.0, "d": float("nan")}.items()}
    report["idle"] = {"ttft_p95_s": 1.0}
    ratios, goals = bench.ratios_and_goals(report)
    assert ratios == {"a_over_c": None, "a_over_d": None, "b_over_a": 1.0, "ttft_p95_loaded_over_idle": None}
    assert goals["b_over_a_min_0.8"] and not goals["a_over_c_min_5"] and not goals["ttft_p95_loaded_over_idle_max_3"]
