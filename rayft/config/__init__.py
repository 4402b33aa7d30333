"""Typed experiment configuration: schema, loader with overrides, and validation."""

from rayft.config.loader import apply_overrides, build_config, dump_config, load_config, read_yaml
from rayft.config.schema import ExperimentConfig, SearchParam

__all__ = ["ExperimentConfig", "SearchParam", "apply_overrides", "build_config", "dump_config", "load_config", "read_yaml"]
