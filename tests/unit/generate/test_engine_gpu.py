"""The decode engine on a CUDA GPU: the serving placement (bfloat16, SDPA) and float32 parity with plain ``generate``.

Skipped on machines without CUDA. On a GPU machine: ``pytest -m gpu tests/unit/generate/test_engine_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from rayft.generate import DecodeEngine, EngineConfig, Request, SamplingParams
from rayft.generate.device import accelerate

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GREEDY = SamplingParams(max_tokens=12, temperature=0)
WORDS = "the movie was a story and very fun with cast quite what is the capital of france".split()


def _models(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
                           adapter_name="a")
    model.add_adapter("b", LoraConfig(r=4, target_modules=["o_proj"], init_lora_weights=False))
    return model.eval(), AutoTokenizer.from_pretrained(tiny_llama)


def _drain(engine: DecodeEngine) -> None:
    while engine.has_work():
        engine.step()


def test_float32_mixed_batch_on_the_gpu_matches_generate(tiny_llama):
    model, tok = _models(tiny_llama)
    model.to("cuda")
    engine = DecodeEngine(model, tok, EngineConfig(max_running=8, step_tokens=64))
    cases = [(None, 3), ("a", 9), ("b", 5), ("a", 12)]
    handles = [engine.add(Request(tok(" ".join(WORDS[:n]))["input_ids"], GREEDY, adapter=a)) for a, n in cases]
    _drain(engine)
    for (adapter, n), handle in zip(cases, handles):
        ids = torch.tensor([tok(" ".join(WORDS[:n]))["input_ids"]], device="cuda")
        if adapter is None:
            with model.disable_adapter():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                     do_sample=False, pad_token_id=0)
        else:
            model.set_adapter(adapter)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                 do_sample=False, pad_token_id=0)
        want = out[0, ids.shape[1]:].tolist()
        want = want[: want.index(tok.eos_token_id)] if tok.eos_token_id in want else want
        assert list(handle.result(timeout=0).choices[0].token_ids) == want, adapter


def test_serving_placement_runs_bfloat16_with_sdpa(tiny_llama):
    model, tok = _models(tiny_llama)
    model = accelerate(model)
    weight = model.get_base_model().model.embed_tokens.weight
    assert weight.is_cuda and weight.dtype == torch.bfloat16
    assert model.get_base_model().config._attn_implementation == "sdpa"
    engine = DecodeEngine(model, tok, EngineConfig(max_running=8, step_tokens=64))
    sampled = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=1, n=2)
    handles = [engine.add(Request(tok(" ".join(WORDS[:n]))["input_ids"], sampled, adapter=a))
               for a, n in [(None, 4), ("a", 7), ("b", 10)]]
    _drain(engine)
    for handle in handles:
        result = handle.result(timeout=0)
        assert len(result.choices) == 2 and all(c.finish_reason in ("stop", "length") for c in result.choices)
