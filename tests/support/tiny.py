"""Tiny models, tokenizers and data built locally from a config (no network, seconds to make)."""

from __future__ import annotations

import random
from pathlib import Path

POSITIVE = ["great", "wonderful", "moving", "brilliant", "fun", "charming", "superb", "delightful"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "tedious", "messy", "bland", "painful"]
FILLER = ["the", "movie", "film", "plot", "was", "a", "story", "acting", "and", "very", "with", "cast", "quite"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab() -> list[str]:
    return SPECIALS + sorted(set(POSITIVE + NEGATIVE + FILLER + ["what", "is", "the", "capital", "of", "france",
                                                                    "paris", "hello", "hi", "there", "?", ".", ","]))


def make_bert(path: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A tiny BERT (random weights) and a WordPiece tokenizer saved as an HF folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(vocab=str(path / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(path)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=hidden * 2, max_position_embeddings=128, pad_token_id=0)
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path)
    return path


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_llama(path: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A tiny Llama (random weights) with a word-level tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    words = specials + [w for w in _vocab() if w not in SPECIALS]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(r"<\|[a-z]+\|>", "isolated"),
                                                  pre_tokenizers.WhitespaceSplit()])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", additional_special_tokens=specials[4:])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Learnable two-class data: the label follows the sentiment word in each text."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        words = rng.sample(FILLER, 4) + [word] + rng.sample(FILLER, 2)
        rows.append({"review": " ".join(words), "sentiment": label})
    return rows


def chat_rows(n: int) -> list[dict[str, str]]:
    pairs = [("what is the capital of france ?", "paris ."), ("hello", "hi there ."),
             ("what is the film ?", "a story ."), ("hi", "hello there .")]
    return [{"prompt": pairs[i % len(pairs)][0], "response": pairs[i % len(pairs)][1]} for i in range(n)]
