"""Seeded train/validation/test splits (stratified when the task has labels)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from rayft.config.schema import DataConfig
from rayft.errors import DataError


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def _count(size: float | int, total: int) -> int:
    return int(round(size * total)) if isinstance(size, float) and size < 1 else int(size)


def _cut(df: pd.DataFrame, n: int, seed: int, stratify: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Take ``n`` rows out of ``df`` (stratified when possible); returns (taken, rest)."""
    if n <= 0:
        return df.iloc[:0], df
    from sklearn.model_selection import train_test_split  # driver only: training workers never split

    strat = df[stratify] if stratify and df[stratify].value_counts().min() >= 2 else None
    try:
        rest, taken = train_test_split(df, test_size=n, random_state=seed, stratify=strat)
    except ValueError:  # too few rows per class for stratification
        rest, taken = train_test_split(df, test_size=n, random_state=seed)
    return taken, rest


def make_splits(df: pd.DataFrame, cfg: DataConfig, stratify: str | None = None) -> Splits:
    """Shuffle with ``cfg.seed`` and cut validation, test and (optionally capped) train.

    Raises:
        DataError: if the requested sizes do not fit the data.
    """
    total = len(df)
    if cfg.max_samples and total > cfg.max_samples:
        df, _ = _cut(df, cfg.max_samples, cfg.seed, stratify)
        total = len(df)
    n_val, n_test = _count(cfg.validation_size, total), _count(cfg.test_size, total)
    if n_val < 1 or n_val + n_test >= total:
        raise DataError(f"data: validation_size={cfg.validation_size} and test_size={cfg.test_size} leave no "
                        f"training rows out of {total}; expected fractions < 1 or counts that sum below {total}")
    val, rest = _cut(df, n_val, cfg.seed, stratify)
    test, train = _cut(rest, n_test, cfg.seed + 1, stratify)
    if cfg.train_size and len(train) > cfg.train_size:
        train, _ = _cut(train, cfg.train_size, cfg.seed + 2, stratify)
    return Splits(*(part.reset_index(drop=True) for part in (train, val, test)))
