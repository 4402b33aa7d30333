"""Train/serve parity of prompt rendering: the PromptFormat training used travels in the manifest, and the
chat and completion routes render requests through it into exactly the ids training produced."""

from __future__ import annotations

import json
import shutil

import pytest

from rayft.config import build_config
from rayft.data import IGNORE_INDEX, prepare_data
from rayft.errors import StoreError
from rayft.models import load_tokenizer
from rayft.store import AdapterStore, Manifest
from rayft.store.export import export_checkpoint
from rayft.tasks.prompt_format import CHAT, FALLBACK_TEMPLATE, PAIRS, PromptFormat, for_manifest
from rayft.tasks.sft import render_prompt
from rayft.train.handoff import MODEL_DIR, CheckpointState, LoopState
from tests.support import cls_config
from tests.support import tiny_tasks as tt

SYSTEM = "the film is very fun ."  # in the tiny vocabulary: it decodes back
PROMPTS = [p for p, _ in tt.CHAT]


@pytest.fixture(scope="module")
def plain_llama(tiny_llama, tmp_path_factory):
    """The tiny Llama with a tokenizer that has no chat template (training uses the text fallback)."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama-plain"
    path.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama / name, path / name)
    tok = load_tokenizer(str(tiny_llama))
    tok.chat_template = None
    tok.save_pretrained(path)
    return path


def _cfg(model, data, tmp_path, task="sft", **data_keys):
    raw = cls_config(model, data, tmp_path, task={"name": task})
    raw["data"] = {"source": str(data), "validation_size": 4, "test_size": 0, "system_prompt": SYSTEM, **data_keys}
    raw["method"] = {"name": "full"}
    return build_config(raw)


def _export(cfg, prepared_model, tmp_path) -> Manifest:
    """The real export path: a checkpoint folder (model + rayft_state.json) copied into a store."""
    ckpt = tmp_path / "ckpt"
    (ckpt / MODEL_DIR).mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(prepared_model / name, ckpt / MODEL_DIR / name)
    CheckpointState(LoopState(), config=cfg.model_dump(mode="json")).write(str(ckpt))
    store = AdapterStore(tmp_path / "store")
    export_checkpoint(str(ckpt), None, store, adapter_id="parity")
    assert "prompt_format" in json.loads((store.path("parity") / "rayft.json").read_text())
    return store.manifest("parity")


def _prompt_prefixes(prepared) -> list[list[int]]:
    """Every training row's ids up to its first learned token (the prompt the model answered)."""
    out = []
    for ids, labels in zip(prepared.splits["train"]["input_ids"], prepared.splits["train"]["labels"]):
        first = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
        out.append(ids[:first])
    return out


@pytest.mark.parametrize("templated", [True, False], ids=["chat-template", "fallback"])
@pytest.mark.parametrize("layout", ["prompt_response", "chat"])
def test_exported_format_renders_chat_requests_as_training_did(tiny_llama, plain_llama, tmp_path, templated,
                                                               layout):
    model = tiny_llama if templated else plain_llama
    rows = tt.chat_rows(24) if layout == "chat" else [{"prompt": p, "response": r} for p, r in tt.CHAT * 6]
    cfg = _cfg(model, tt.write_jsonl(tmp_path / "data.jsonl", rows), tmp_path)
    prepared = prepare_data(cfg)
    manifest = _export(cfg, model, tmp_path)
    tok = load_tokenizer(str(model))
    fmt = for_manifest(manifest, tok)

    assert fmt.system_prompt == SYSTEM and fmt.layout == (CHAT if layout == "chat" else PAIRS)
    assert (fmt.chat_template is not None) is templated
    served = [fmt.render_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    prefixes = _prompt_prefixes(prepared)
    assert prefixes and all(prefix in served for prefix in prefixes)
    assert all(SYSTEM in tok.decode(ids) for ids in served)
    if layout == "prompt_response":  # the training code's own one-prompt renderer agrees
        assert served == [render_prompt(tok, p, SYSTEM) for p in PROMPTS]


def test_dpo_exports_its_format_and_classifiers_none(tiny_llama, tiny_bert, sentiment_csv, tmp_path):
    from rayft.store.export import _prompt_format

    cfg = _cfg(tiny_llama, tt.write_jsonl(tmp_path / "pref.jsonl", tt.preference_rows(12)), tmp_path, task="dpo")
    prepared = prepare_data(cfg)
    tok = load_tokenizer(str(tiny_llama))
    fmt = for_manifest(_export(cfg, tiny_llama, tmp_path), tok)
    served = [fmt.render_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    assert fmt.layout == PAIRS and all(prefix in served for prefix in _prompt_prefixes(prepared))
    classifier = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path))
    assert _prompt_format(classifier, str(tiny_bert)) is None


def test_stop_tokens_are_the_end_of_turn_then_eos(tiny_llama, plain_llama):
    tok = load_tokenizer(str(tiny_llama))
    fmt = PromptFormat.of_tokenizer(tok)
    assert fmt.stop_token_ids == (tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id) and fmt.stop == ()
    plain = PromptFormat.of_tokenizer(load_tokenizer(str(plain_llama)))
    assert plain.stop_token_ids == (tok.eos_token_id,) and plain.stop == ("### Instruction:",)
    assert plain.fallback_template == FALLBACK_TEMPLATE


def test_round_trip_through_json(tiny_llama, plain_llama):
    for model in (tiny_llama, plain_llama):
        fmt = PromptFormat.of_tokenizer(load_tokenizer(str(model)), SYSTEM, CHAT)
        assert PromptFormat.from_dict(json.loads(json.dumps(fmt.to_dict()))) == fmt
    assert PromptFormat.from_dict({"system_prompt": "x", "added_later": 1}) == PromptFormat(system_prompt="x")


@pytest.mark.parametrize("data, field", [("nope", "mapping"), ({"stop_token_ids": ["x"]}, "stop_token_ids"),
                                         ({"layout": "rows"}, "layout"), ({"fallback_template": "no slot"},
                                                                          "fallback_template")])
def test_malformed_formats_name_the_field(data, field):
    with pytest.raises(StoreError, match=field):
        PromptFormat.from_dict(data)


def _old_manifest() -> dict:
    """A manifest written before prompt_format existed."""
    return {"adapter_id": "old", "kind": "adapter", "base_model": "m", "base_fingerprint": "f", "method": "lora",
            "task": "sft", "labels": None, "metrics": {}, "config": {"data": {"system_prompt": SYSTEM}}}


def test_older_manifests_render_as_the_server_did(tiny_llama, plain_llama):
    old = Manifest.from_dict(_old_manifest())
    assert old.prompt_format is None
    for model in (tiny_llama, plain_llama):
        tok = load_tokenizer(str(model))
        fmt = for_manifest(old, tok)
        assert fmt.render_chat(tok, [{"role": "user", "content": "hello"}]) == render_prompt(tok, "hello", SYSTEM)
        base = for_manifest(None, tok)  # a plain base model: no system prompt
        assert base.render_chat(tok, [{"role": "user", "content": "hello"}]) == render_prompt(tok, "hello")


def test_a_conversation_system_message_replaces_the_trained_one_and_completions_stay_plain(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    fmt = PromptFormat.of_tokenizer(tok, SYSTEM)
    own = fmt.render_chat(tok, [{"role": "system", "content": "hi"}, {"role": "user", "content": "hello"}])
    assert tok.decode(own).count("<|system|>") == 1 and "film" not in tok.decode(own)
    assert fmt.render_completion(tok, "hello there") == tok("hello there", add_special_tokens=True)["input_ids"]
