"""Data stage: sources (local files, built-in catalog) → seeded splits → tokenized columns."""

from rayft.data.catalog import DATASETS, CatalogDataset, register_dataset
from rayft.data.collate import IGNORE_INDEX, Columnar, pad_batch
from rayft.data.prepare import PreparedData, prepare_data
from rayft.data.sources import load_source, read_file, source_columns
from rayft.data.splits import Splits, make_splits

__all__ = ["DATASETS", "IGNORE_INDEX", "CatalogDataset", "Columnar", "PreparedData", "Splits", "load_source",
           "make_splits", "pad_batch", "prepare_data", "read_file", "register_dataset", "source_columns"]
