"""Readers for structured data layouts that pandas does not read directly.

- CoNLL-style token files (``token<TAB>tag`` per line, a blank line between sentences) → ``tokens``/``tags`` lists.
- SQuAD-style nested JSON (``data[].paragraphs[].qas[]``) → one row per question with ``id``, ``context``,
  ``question`` and ``answers`` (``{"text": [...], "answer_start": [...]}``, the layout HF ``datasets`` uses).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from rayft.errors import DataError


def read_conll(path: str | Path, *, token_col: int = 0, tag_col: int = -1) -> pd.DataFrame:
    """Sentences of a CoNLL-style file as rows of ``tokens`` and ``tags`` lists.

    Columns are split on tabs (or on whitespace when a line has no tab); ``-DOCSTART-`` lines are skipped.

    Raises:
        DataError: for a line without a tag or a file with no sentences.
    """
    p = Path(path)
    rows: list[dict[str, list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    with open(p, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                if tokens:
                    rows.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if fields[0] == "-DOCSTART-":
                continue
            if len(fields) < 2:
                raise DataError(f"data.source {str(p)!r}: line {number} has no tag; expected 'token<TAB>tag'")
            tokens.append(fields[token_col])
            tags.append(fields[tag_col].strip())
    if tokens:
        rows.append({"tokens": tokens, "tags": tags})
    if not rows:
        raise DataError(f"data.source {str(p)!r}: no sentences; expected 'token<TAB>tag' lines and blank separators")
    return pd.DataFrame(rows)


def is_squad(doc: Any) -> bool:
    """Whether a parsed JSON document has the SQuAD nesting ``data[].paragraphs[].qas[]``."""
    return (isinstance(doc, dict) and isinstance(doc.get("data"), list) and bool(doc["data"])
            and isinstance(doc["data"][0], dict) and "paragraphs" in doc["data"][0])


def flatten_squad(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per question of a SQuAD-style document (unanswerable questions get empty answers)."""
    rows = []
    for article in doc["data"]:
        for para in article.get("paragraphs") or []:
            for qa in para.get("qas") or []:
                answers = qa.get("answers") or []
                rows.append({
                    "id": str(qa.get("id", len(rows))), "title": article.get("title", ""),
                    "context": para["context"], "question": qa["question"],
                    "answers": {"text": [a["text"] for a in answers],
                                "answer_start": [int(a["answer_start"]) for a in answers]},
                })
    return pd.DataFrame(rows)


def read_json_document(path: Path) -> pd.DataFrame:
    """A JSON file: SQuAD nesting is flattened, anything else goes to ``pandas.read_json``."""
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    if is_squad(doc):
        return flatten_squad(doc)
    return pd.DataFrame(doc) if isinstance(doc, list) else pd.read_json(path)
