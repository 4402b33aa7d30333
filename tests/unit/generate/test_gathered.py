"""The gathered LoRA forward against peft's mixed batch: same logits for mixed rows, ranks and target modules."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from rayft.generate.gathered import GatheredLora


@pytest.fixture()
def peft(tiny_llama):
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
                           adapter_name="a")
    model.add_adapter("b", LoraConfig(r=2, lora_alpha=7, target_modules=["o_proj", "up_proj"],
                                      init_lora_weights=False))
    model.add_adapter("d", LoraConfig(r=2, target_modules=["q_proj"], use_dora=True, init_lora_weights=False))
    return model.eval()


def _logits(model, ids, **extra):
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits


def test_gathered_rows_equal_peft_mixed_batch(peft):
    ids = torch.randint(5, 40, (5, 7), generator=torch.Generator().manual_seed(1))
    rows = ["a", None, "b", "a", None]
    lora = GatheredLora(peft)
    assert lora.supports({"a", "b"}) and not lora.supports({"a", "d"})  # DoRA runs through peft
    with lora.rows(rows):
        gathered = _logits(peft, ids)
    mixed = _logits(peft, ids, adapter_names=[r or "__base__" for r in rows])
    assert torch.allclose(gathered, mixed, atol=1e-5)
    assert not torch.allclose(mixed[0], mixed[1], atol=1e-3)  # the rows really differ
    with lora.rows(rows):  # again, from the cached composition
        assert torch.allclose(_logits(peft, ids), mixed, atol=1e-5)
    assert "forward" not in vars(peft.base_model.model.model.layers[0].self_attn.q_proj)  # patches removed


def test_new_weights_in_a_slot_are_gathered_after_invalidate(peft):
    ids = torch.randint(5, 40, (2, 5), generator=torch.Generator().manual_seed(2))
    lora = GatheredLora(peft)
    with lora.rows(["a", "b"]):
        _logits(peft, ids)
    with torch.no_grad():  # what refilling a free slot does: new weights copied into the same tensors
        for module in peft.modules():
            if hasattr(module, "lora_B") and "a" in module.lora_B:
                module.lora_B["a"].weight.mul_(-3)
    lora.invalidate()
    with lora.rows(["a", "b"]):
        gathered = _logits(peft, ids)
    assert torch.allclose(gathered, _logits(peft, ids, adapter_names=["a", "b"]), atol=1e-5)
