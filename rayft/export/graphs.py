"""ONNX graphs of stored models: what each task's graph takes and returns, writing it, int8, running it.

A graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the tokenizer makes them) with
dynamic batch and sequence axes, and returns the task head's outputs: ``logits`` (sequence and token
classification, causal LMs) or ``start_logits`` and ``end_logits`` (extractive QA). A causal LM's graph returns the
logits of every position of the whole sequence and has no KV-cache inputs: each decoding step would run the whole
prefix again. That keeps one graph for every architecture transformers exports (no cache layout baked into it);
a decoding graph with past key/values is left to runtimes built for it (see ``docs/export.md``).

:class:`OnnxModel` runs a graph with onnxruntime behind the call shape of a transformers model
(``model(**batch).logits``), so parity checks, ``rayft.store.load_for_inference`` and the server treat it as one.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

GRAPH_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 18


@dataclass(frozen=True)
class GraphSpec:
    """One task's graph: the model outputs it returns and whether the model is a causal LM."""

    outputs: tuple[str, ...]
    per_token: bool = True  # outputs have a sequence axis (all but sequence classification)
    causal: bool = False


# task -> graph; tasks missing here export to ``merged`` only
GRAPHS: dict[str, GraphSpec] = {
    "sequence_classification": GraphSpec(("logits",), per_token=False),
    "token_classification": GraphSpec(("logits",)),
    "extractive_qa": GraphSpec(("start_logits", "end_logits")),
    **{name: GraphSpec(("logits",), causal=True) for name in ("sft", "dpo", "grpo")},
}


def model_inputs(batch: dict[str, torch.Tensor], spec: GraphSpec) -> dict[str, torch.Tensor]:
    """The tensors of a collated batch that the model (and its graph) take."""
    names = INPUTS[:2] if spec.causal else INPUTS
    return {k: batch[k] for k in names if k in batch}


def run_torch(model: Any, inputs: dict[str, torch.Tensor], spec: GraphSpec) -> dict[str, torch.Tensor]:
    """The outputs a graph of ``model`` would return, computed by PyTorch (float32)."""
    with torch.no_grad():
        out = model(**inputs, **({"use_cache": False} if spec.causal else {}))
    return {name: getattr(out, name).float() for name in spec.outputs}


class _Graph(torch.nn.Module):
    """``model`` called with positional inputs, returning the spec's outputs as a tuple (what the exporter traces)."""

    def __init__(self, model: Any, names: tuple[str, ...], spec: GraphSpec) -> None:
        super().__init__()
        self.model, self.names, self.spec = model, names, spec

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = run_torch(self.model, dict(zip(self.names, args)), self.spec)
        return tuple(out[name] for name in self.spec.outputs)


def write_graph(model: Any, example: dict[str, torch.Tensor], spec: GraphSpec, path: Path) -> None:
    """Export ``model`` (a plain, merged PyTorch model) to ``path`` with dynamic batch and sequence axes.

    Uses the TorchScript exporter: it traces these models offline in about a second where the dynamo exporter
    takes ten times longer on the same graph, with the same outputs.
    """
    names = tuple(example)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update({n: {0: "batch", 1: "sequence"} if spec.per_token else {0: "batch"} for n in spec.outputs})
    model.eval()
    with warnings.catch_warnings():  # the exporter's deprecation note and tracer notes on shape-dependent Python code
        warnings.simplefilter("ignore")
        torch.onnx.export(_Graph(model, names, spec), tuple(example.values()), str(path), input_names=list(names),
                          output_names=list(spec.outputs), dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of a graph (onnxruntime): int8 weights of the MatMul/Gemm nodes with constant
    weights and of the embedding tables (Gather), activations quantized per call. ``per_channel`` keeps one scale
    per output column; ``reduce_range`` (7-bit weights) avoids the u8 x s8 overflow of CPUs without VNNI (AVX2 only,
    like this project's machines), which on a tiny BERT moved logits by 40% of their scale against 4% with it (on
    MiniLM-L6 the two are alike). Other settings measured on the quickstart (docs/benchmarks.md) did no better."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on the root logger at every call
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)


def threads() -> int:
    """Threads for an onnxruntime session: torch's own setting (which the server sets from the replica's CPUs)."""
    return max(1, torch.get_num_threads())


class OnnxModel(torch.nn.Module):
    """An onnxruntime session over a stored graph, called like a transformers model.

    A subclass of ``torch.nn.Module`` with one empty parameter, so code that asks a model for its device, calls
    ``.eval()`` or moves it (the server's ``accelerate``) works unchanged; the session itself runs on the CPU.
    """

    def __init__(self, folder: str | Path, intra_threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort
        from transformers import AutoConfig

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_threads or threads()
        opts.inter_op_num_threads = 1
        path = Path(folder) / GRAPH_FILE
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, NoSuchFile...) derive from Exception
            raise ValueError(f"unreadable ONNX graph {path}: {exc}") from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.config = AutoConfig.from_pretrained(str(folder))
        self.anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, **batch: Any) -> SimpleNamespace:
        missing = [n for n in self.input_names if n not in batch]
        if missing:
            raise ValueError(f"the ONNX graph needs inputs {missing}; got {sorted(batch)}")
        feed = {n: batch[n].detach().cpu().numpy() for n in self.input_names}
        outs = self.session.run(None, feed)
        return SimpleNamespace(**{n: torch.from_numpy(o) for n, o in zip(self.output_names, outs)})
