"""Exports for deployment: merged models, ONNX graphs and int8 graphs of stored results, checked for parity.

``rayft export SOURCE --format {adapter,merged,onnx,onnx-int8}`` calls :func:`export_entry`. Importing this package
imports torch; :mod:`rayft.store` imports it lazily.
"""

from rayft.export.build import ExportRequest, ParityError, UnsupportedFormatError, export_entry
from rayft.export.formats import FORMATS, entry_format, names, problem, supported
from rayft.export.graphs import GRAPHS, OnnxModel

__all__ = ["FORMATS", "GRAPHS", "ExportRequest", "OnnxModel", "ParityError", "UnsupportedFormatError",
           "entry_format", "export_entry", "names", "problem", "supported"]
