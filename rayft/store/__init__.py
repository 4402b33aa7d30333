"""Adapter store: export results with a manifest, list and resolve them, load them for inference."""

from rayft.store.export import default_adapter_id, export_checkpoint
from rayft.store.load import base_key, load_base, load_for_inference, manifest_config
from rayft.store.select import export_one, export_sweep, export_trials, sweep_summary
from rayft.store.store import MANIFEST, AdapterStore, Manifest, validate_id

__all__ = ["MANIFEST", "AdapterStore", "Manifest", "base_key", "default_adapter_id", "export_checkpoint",
           "export_one", "export_sweep", "export_trials", "load_base", "load_for_inference", "manifest_config",
           "sweep_summary", "validate_id"]
