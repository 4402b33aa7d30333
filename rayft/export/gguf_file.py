"""``--format gguf``: a merged Llama-family causal LM as one float32 GGUF file (llama.cpp, Ollama, transformers).

The ``gguf`` package writes the file: ``GGUFWriter`` for metadata and tensors, ``TensorNameMap`` for GGUF's tensor
names, ``BpeVocab``/``SpecialVocab`` for a byte-level BPE tokenizer's vocabulary, merges and special tokens. What it
does not hold is llama.cpp's per-architecture conversion; the two steps of it Llama needs are written here: the
hyper-parameters under GGUF's keys, and the query/key rows permuted into GGML's rotary layout (transformers'
GGUF loader undoes exactly this permutation). Other architectures and tokenizers are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rayft.errors import StoreError

GGUF_FILE = "model.gguf"
ARCHITECTURES = ("llama",)  # config.model_type values written


def _permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotary halves -> GGML's interleaved pairs, per head (llama.cpp's ``LlamaModel.permute``)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def check_writable(folder: Path) -> None:
    """Raise unless the merged model in ``folder`` is a Llama-family model with a byte-level BPE tokenizer.

    Raises:
        StoreError: naming the architecture or tokenizer that cannot be written.
    """
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type not in ARCHITECTURES:
        raise StoreError(f"GGUF export writes {', '.join(ARCHITECTURES)} models; this one is {model_type!r}")
    tok = folder / "tokenizer.json"
    kind = json.loads(tok.read_text()).get("model", {}).get("type") if tok.is_file() else None
    if kind != "BPE":
        raise StoreError(f"GGUF export writes byte-level BPE tokenizers (tokenizer.json of type BPE); this "
                         f"model's is {kind or 'not a tokenizer.json'}")


def write_gguf(model: Any, folder: Path, path: Path) -> None:
    """Write ``model`` (saved with its tokenizer in ``folder``) as a float32 GGUF file at ``path``."""
    import gguf

    check_writable(folder)
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(folder.name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens, scores, types = zip(*gguf.BpeVocab(folder).all_tokens())
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(list(tokens))
    writer.add_token_scores(list(scores))
    writer.add_token_types(list(types))
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    state = model.state_dict()
    if getattr(cfg, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # GGUF readers reuse the token embedding
    for key, tensor in state.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise StoreError(f"GGUF export: no GGUF name for tensor {key!r}")
        data = tensor.detach().float()
        if key.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif key.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        writer.add_tensor(name, data.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_gguf(folder: Path) -> Any:
    """The GGUF file read back by transformers (as a float32 PyTorch model)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE, dtype=torch.float32).eval()
