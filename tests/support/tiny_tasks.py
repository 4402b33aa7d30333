"""Tiny, learnable data for every task, in the vocabulary of the tiny models of ``tiny.py``."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.support.tiny import FILLER, NEGATIVE, POSITIVE

PLACES = ["paris", "france"]


def ner_rows(n: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """Sentences whose places are ``loc`` entities and whose "very <praise>" spans are ``opinion`` entities."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(4, 8)):
            r = rng.random()
            if r < 0.2:
                words.append(rng.choice(PLACES)), tags.append("B-loc")
            elif r < 0.3:
                words += ["very", rng.choice(POSITIVE)]
                tags += ["B-opinion", "I-opinion"]
            else:
                words.append(rng.choice([w for w in FILLER if w != "very"])), tags.append("O")
        rows.append({"tokens": words, "tags": tags})
    return rows


def write_conll(path: Path, rows: list[dict[str, list[str]]]) -> Path:
    with open(path, "w") as fh:
        for row in rows:
            fh.writelines(f"{w}\t{t}\n" for w, t in zip(row["tokens"], row["tags"]))
            fh.write("\n")
    return path


def squad_doc(n: int, seed: int = 0) -> dict:
    """A SQuAD-style document: where is the praise word of a short review?"""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        word = rng.choice(POSITIVE + NEGATIVE)
        left = " ".join(rng.sample(FILLER, rng.randint(2, 6)))
        right = " ".join(rng.sample(FILLER, rng.randint(2, 6)))
        context = f"{left} {word} {right}"
        paragraphs.append({"context": context, "qas": [{
            "id": f"q{i}", "question": "what is the film ?",
            "answers": [{"text": word, "answer_start": len(left) + 1}]}]})
    return {"version": "1.1", "data": [{"title": "reviews", "paragraphs": paragraphs}]}


def preference_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompt/chosen/rejected triples: the chosen answer is the right one, the rejected one a wrong one."""
    pairs = [("what is the capital of france ?", "paris .", "the movie ."),
             ("hello", "hi there .", "boring ."),
             ("what is the film ?", "a story .", "paris ."),
             ("hi", "hello there .", "awful .")]
    rng = random.Random(seed)
    return [dict(zip(("prompt", "chosen", "rejected"), rng.choice(pairs))) for _ in range(n)]


def review_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Reward-model pairs: a positive review is preferred over a negative one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        filler = rng.sample(FILLER, 4)
        rows.append({"prompt": "the movie",
                     "chosen": " ".join(filler[:2] + [rng.choice(POSITIVE)] + filler[2:]),
                     "rejected": " ".join(filler[:2] + [rng.choice(NEGATIVE)] + filler[2:])})
    return rows


CHAT = [("what is the capital of france ?", "paris ."), ("hello", "hi there ."), ("what is the film ?", "a story ."),
        ("hi", "hello there .")]


def alpaca_rows(n: int) -> list[dict[str, str]]:
    return [{"instruction": CHAT[i % 4][0], "input": "" if i % 2 else "the film", "output": CHAT[i % 4][1]}
            for i in range(n)]


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": CHAT[i % 4][0]}, {"role": "assistant", "content": CHAT[i % 4][1]},
                          {"role": "user", "content": CHAT[(i + 1) % 4][0]},
                          {"role": "assistant", "content": CHAT[(i + 1) % 4][1]}]} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rl_prompts(n: int) -> list[dict[str, str]]:
    """Prompts for the RL tasks (words of the tiny vocabulary) and an ``answer`` column for column-reading rewards."""
    from tests.support.tiny import chat_rows

    return [{"prompt": r["prompt"], "answer": r["response"].split()[0]} for r in chat_rows(n)]
