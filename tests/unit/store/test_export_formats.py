"""rayft export --format merged / onnx / onnx-int8 on tiny models: each format round-trips with parity asserted,
pruning reports its accuracy change, parity failures write nothing (or a flagged entry), bad input exits 2."""

from __future__ import annotations

import json

import pytest
import torch

from rayft.cli import main
from rayft.export import ExportRequest, export_entry
from rayft.export.build import ParityError
from rayft.store import AdapterStore, load_for_inference
from tests.support import export_cases as cases
from tests.support.serve_helpers import TEXTS


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_bert, sentiment_csv):
    tmp = tmp_path_factory.mktemp("export")
    st = AdapterStore(tmp / "store")
    cases.cls_entry(st, tiny_bert, sentiment_csv, tmp)
    return st


def _predict(store: AdapterStore, entry: str, texts=TEXTS) -> torch.Tensor:
    model, tok, m = load_for_inference(store, entry)
    enc = tok(list(texts), truncation=True, max_length=m.max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.float()


def test_each_format_round_trips_with_parity(store):
    source = _predict(store, "cls")
    for fmt, files in (("merged", "model.safetensors"), ("onnx", "model.onnx"), ("onnx-int8", "model.onnx")):
        m = export_entry(store, ExportRequest("cls", fmt))
        assert m.adapter_id == f"cls-{fmt}" and m.format == fmt and not m.drift
        assert m.source["id"] == "cls" and m.source["method"] == "lora" and m.labels == ["neg", "pos"]
        folder = store.path(m.adapter_id)
        assert (folder / files).is_file() and (folder / "tokenizer_config.json").is_file()
        assert json.loads((folder / "rayft.json").read_text())["parity"] == m.parity
        assert m.parity["passed"] and m.parity["rows"] == 40 and m.parity["split"] == "validation"
        got = _predict(store, m.adapter_id)
        if fmt == "onnx-int8":  # quantized: the labels hold, the logits move a little
            assert m.parity["rule"] == "int8" and abs(m.parity["accuracy_export"] - m.parity["accuracy_source"]) <= .01
            assert got.argmax(-1).tolist() == source.argmax(-1).tolist()
        else:
            assert m.parity["max_rel_diff"] <= 1e-4
            assert torch.allclose(got, source, atol=1e-4 * source.abs().max())
    assert m.parity["accuracy_source"] > 0.9  # the adapter learned its data: agreement means something
    from transformers import AutoModelForSequenceClassification  # merged is a plain transformers folder

    plain = AutoModelForSequenceClassification.from_pretrained(store.path("cls-merged"))
    assert plain.config.id2label == {0: "neg", 1: "pos"}
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no scratch folders left


def test_int8_graph_is_smaller_and_runs_in_plain_onnxruntime(store):
    import onnxruntime as ort

    for fmt in ("onnx", "onnx-int8"):
        if not store.exists(f"cls-{fmt}"):
            export_entry(store, ExportRequest("cls", fmt))
    fp32, int8 = (store.path(f"cls-{f}") / "model.onnx" for f in ("onnx", "onnx-int8"))
    assert int8.stat().st_size < fp32.stat().st_size
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} == {"input_ids", "attention_mask", "token_type_ids"}
    batch = {k: v.numpy() for k, v in _encode(store, ["great fun", "a dull , boring and tedious plot indeed"]).items()}
    (logits,) = session.run(None, batch)
    assert logits.shape == (2, 2)  # dynamic batch and sequence axes


def _encode(store, texts):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(store.path("cls-onnx"))(texts, padding=True, return_tensors="pt")


def test_prune_reports_the_accuracy_change(store):
    m = export_entry(store, ExportRequest("cls", "onnx", adapter_id="cls-pruned", prune=0.4))
    p = m.pruning
    assert p["structured"] is False and p["fraction"] == 0.4 and p["sparsity"] == pytest.approx(0.4, abs=0.01)
    assert p["accuracy_change"] == pytest.approx(p["accuracy_after"] - p["accuracy_before"])
    assert p["accuracy_before"] == m.parity["accuracy_source"] or m.parity["passed"]
    merged = export_entry(store, ExportRequest("cls", "merged", adapter_id="cls-pruned-merged", prune=0.4))
    model, _, _ = load_for_inference(store, merged.adapter_id)
    body = [m.weight for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "classifier" not in name]
    zeros = sum(int((w == 0).sum()) for w in body) / sum(w.numel() for w in body)
    assert zeros == pytest.approx(0.4, abs=0.01)  # the zeros are stored in the merged folder
    assert float((model.classifier.weight == 0).float().mean()) < 0.1  # the head is kept whole


def test_parity_failure_writes_nothing_unless_drift_is_allowed(store, monkeypatch):
    import rayft.export.parity as parity

    monkeypatch.setattr(parity, "FP32_RTOL", 0.0)  # no float export can meet a zero tolerance
    with pytest.raises(ParityError, match="nothing was written"):
        export_entry(store, ExportRequest("cls", "onnx", adapter_id="cls-strict"))
    assert not store.exists("cls-strict") and not (store.root / "cls-strict").exists()
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]
    m = export_entry(store, ExportRequest("cls", "onnx", adapter_id="cls-strict", allow_drift=True))
    assert m.drift and not m.parity["passed"] and store.manifest("cls-strict").drift
    from rayft.store.records import listing

    assert any(line.startswith("cls-strict\tonnx\t") and "DRIFT" in line for line in listing(store))


@pytest.mark.parametrize("kind", ["ner", "qa", "chat"])
def test_other_heads_export_to_onnx_with_parity(kind, tmp_path, tiny_bert, tiny_llama, chat_jsonl):
    st = AdapterStore(tmp_path / "store")
    made = {"ner": lambda: cases.ner_entry(st, tiny_bert, tmp_path),
            "qa": lambda: cases.qa_entry(st, tiny_bert, tmp_path),
            "chat": lambda: cases.sft_entry(st, tiny_llama, chat_jsonl, tmp_path)}[kind]()
    for fmt in ("merged", "onnx"):
        m = export_entry(st, ExportRequest(made.adapter_id, fmt))
        assert m.parity["passed"] and m.parity["max_rel_diff"] <= 1e-4 and m.parity["agreement"] == 1.0
    model, tok, _ = load_for_inference(st, f"{kind}-onnx")
    names = model.output_names
    assert names == (("start_logits", "end_logits") if kind == "qa" else ("logits",))
    ids = tok(["the movie was great", "hello"], padding=True, return_tensors="pt")
    out = getattr(model(**ids), names[0])
    assert out.shape[:2] == ids["input_ids"].shape  # a value per token (per position for the causal LM)


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(["export", *argv])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_cli_exports_and_refuses_bad_input_with_exit_2(store, capsys, tmp_path, tiny_bert, sentiment_csv):
    root = str(store.root)
    code, out = _cli(capsys, "cls", "--format", "onnx-int8", "--store", root, "--id", "cli-int8")
    assert code == 0 and "exported 'cli-int8' (onnx-int8" in out and "int8 parity" in out
    code, out = _cli(capsys, "cls", "--format", "tflite", "--store", root)
    assert code == 2 and "--format 'tflite'" in out and "adapter, gguf, merged, onnx, onnx-int8" in out
    code, out = _cli(capsys, "no-such-entry", "--format", "onnx", "--store", root)
    assert code == 2 and "SOURCE 'no-such-entry'" in out and "neither an entry" in out
    code, out = _cli(capsys, "cls", "--format", "onnx-int8", "--store", root, "--id", "cli-int8")
    assert code == 2 and "'cli-int8' already exists" in out and "--overwrite" in out
    code, out = _cli(capsys, "cls", "--format", "merged", "--store", root, "--prune", "1.5")
    assert code == 2 and "--prune" in out and "1.5" in out
    cases.prefix_entry(store, tiny_bert, sentiment_csv, tmp_path)
    code, out = _cli(capsys, "prefix", "--format", "onnx", "--store", root)
    assert code == 2 and "method 'prefix' cannot be exported as onnx" in out
    assert "formats that work for 'prefix': adapter" in out
    code, out = _cli(capsys, "cls", "--format", "gguf", "--store", root)
    assert code == 2 and "gguf holds causal LMs" in out
    assert "formats that work for 'cls': adapter, merged, onnx, onnx-int8" in out
    code, out = _cli(capsys, "cli-int8", "--format", "merged", "--store", root)
    assert code == 2 and "itself a onnx-int8 export" in out
    assert not store.exists("prefix-onnx") and not store.exists("cls-onnx-int8-merged")


@pytest.mark.slow
def test_quickstart_sized_model_exports_every_format_with_parity(tmp_path):
    """MiniLM-L6 (22.7M parameters) + LoRA on Rotten Tomatoes, as the quickstart trains it, briefly."""
    from rayft.config import load_config
    from tests.support import REPO

    cfg = load_config(str(REPO / "experiments" / "quickstart.yaml"),
                      ["data.train_size=480", "data.validation_size=256", "data.test_size=64",
                       f"output_dir={tmp_path / 'runs'}", "tracking.wandb=false"])
    raw = cfg.model_dump(mode="json")
    st = AdapterStore(tmp_path / "store")
    src = cases.trained_entry(st, raw, cases.lora("SEQ_CLS", ["query", "key", "value", "dense"], r=8), "qs",
                              steps=30, lr=1e-3)
    assert src.base_model == "minilm-l6"
    for fmt in ("merged", "onnx", "onnx-int8"):
        m = export_entry(st, ExportRequest("qs", fmt))
        assert m.parity["passed"] and m.parity["rows"] == 256 and not m.drift
        if fmt != "onnx-int8":
            assert m.parity["max_rel_diff"] <= 1e-4
    assert m.parity["accuracy_source"] > 0.6  # it learned something: int8 keeping it within a point means something
    int8, fp32 = (st.path(f"qs-{f}") / "model.onnx" for f in ("onnx-int8", "onnx"))
    assert int8.stat().st_size < fp32.stat().st_size / 2


def test_gguf_round_trips_through_transformers(tmp_path, chat_jsonl):
    """A merged causal LM (Llama, grouped-query attention, byte-level BPE) as GGUF, read back by transformers."""
    import gguf
    from transformers import AutoTokenizer

    st = AdapterStore(tmp_path / "store")
    llama = cases.make_llama_bpe(tmp_path / "llama-bpe")
    cases.sft_entry(st, llama, chat_jsonl, tmp_path)
    m = export_entry(st, ExportRequest("chat", "gguf"))
    assert m.kind == "gguf" and m.parity["passed"] and m.parity["max_rel_diff"] <= 1e-4
    path = st.path("chat-gguf") / "model.gguf"
    fields = gguf.GGUFReader(str(path)).fields
    assert {"llama.attention.head_count_kv", "tokenizer.ggml.merges", "tokenizer.chat_template"} <= set(fields)
    text = "what is the capital of france ?"
    assert AutoTokenizer.from_pretrained(st.path("chat-gguf"), gguf_file="model.gguf")(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(llama)(text)["input_ids"]
