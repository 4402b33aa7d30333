"""Data stage: sources (local files, built-in catalog, save_to_disk folders and hub datasets via ``datasets``, split
files) → seeded splits, or the user's own → tokenized columns."""

from rayft.data.catalog import DATASETS, CatalogDataset, register_dataset
from rayft.data.collate import IGNORE_INDEX, Columnar, pad_batch
from rayft.data.prepare import PreparedData, load_data, prepare_data
from rayft.data.sources import SourceData, load_source, open_source, read_file, source_columns
from rayft.data.splits import Splits, given_splits, make_splits

__all__ = ["DATASETS", "IGNORE_INDEX", "CatalogDataset", "Columnar", "PreparedData", "SourceData", "Splits",
           "given_splits", "load_data", "load_source", "make_splits", "open_source", "pad_batch", "prepare_data",
           "read_file", "register_dataset", "source_columns"]
