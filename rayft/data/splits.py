"""Seeded train/validation/test splits (stratified when the task has labels), or the user's own splits used as
they are (only subsampled, seeded, by ``max_samples`` / ``train_size``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from rayft.config.schema import DEFAULT_TEST_SIZE, DEFAULT_VALIDATION_SIZE, DataConfig
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
    df = _cap(df, cfg.max_samples, cfg.seed, stratify)
    total = len(df)
    val_size = DEFAULT_VALIDATION_SIZE if cfg.validation_size is None else cfg.validation_size
    test_size = DEFAULT_TEST_SIZE if cfg.test_size is None else cfg.test_size
    n_val, n_test = _count(val_size, total), _count(test_size, total)
    if n_val < 1 or n_val + n_test >= total:
        raise DataError(f"data: validation_size={val_size} and test_size={test_size} leave no "
                        f"training rows out of {total}; expected fractions < 1 or counts that sum below {total}")
    val, rest = _cut(df, n_val, cfg.seed, stratify)
    test, train = _cut(rest, n_test, cfg.seed + 1, stratify)
    return _splits(_cap(train, cfg.train_size, cfg.seed + 2, stratify), val, test)


def given_splits(frames: dict[str, pd.DataFrame], cfg: DataConfig, stratify: str | None = None) -> Splits:
    """The user's own train/validation(/test) splits, never re-split: each capped at ``max_samples`` rows and
    train at ``train_size`` (seeded, stratified), nothing else.

    Raises:
        DataError: if ``validation_size`` or ``test_size`` is set (they only apply when rayft splits).
    """
    unused = sizes_error(cfg.model_dump())
    if unused:
        raise unused
    capped = {role: _cap(df, cfg.max_samples, cfg.seed, stratify) for role, df in frames.items()}
    train = _cap(capped["train"], cfg.train_size, cfg.seed + 2, stratify)
    return _splits(train, capped["validation"], capped.get("test", capped["validation"].iloc[:0]))


def sizes_error(data: Mapping[str, Any]) -> DataError | None:
    """The error for ``validation_size`` / ``test_size`` set on data that comes split, None if neither is set."""
    sizes = [k for k in ("validation_size", "test_size") if data.get(k) is not None]
    if not sizes:
        return None
    return DataError(f"data.{sizes[0]} {data[sizes[0]]!r}: no sizes for data that comes split (train, validation): "
                     f"its splits are used as they are; remove data.{' and data.'.join(sizes)} (train_size and "
                     "max_samples still subsample)", field=f"data.{sizes[0]}", value=data[sizes[0]])


def _cap(df: pd.DataFrame, limit: int | None, seed: int, stratify: str | None) -> pd.DataFrame:
    return _cut(df, limit, seed, stratify)[0] if limit and len(df) > limit else df


def _splits(train: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame) -> Splits:
    return Splits(*(part.reset_index(drop=True) for part in (train, validation, test)))
