"""Validate the Ray cluster launcher configs in cluster/*.yaml.

Each launcher config (a YAML mapping with a ``provider`` key) is checked against the
JSON schema that ships inside the installed ray wheel (``ray/autoscaler/ray-schema.json``),
the same schema ``ray up`` validates with. Nothing is fetched over the network: the schema
only uses local ``#/definitions/...`` references. The ray package is located without
importing it, so this stays fast.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.support import REPO

jsonschema = pytest.importorskip("jsonschema")

CLUSTER_DIR = REPO / "cluster"


def _launcher_configs() -> list[Path]:
    configs = []
    for path in sorted(CLUSTER_DIR.glob("*.yaml")) + sorted(CLUSTER_DIR.glob("*.yml")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "provider" in data:
            configs.append(path)
    return configs


CONFIGS = _launcher_configs()


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    schema_path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    assert schema_path.is_file(), f"ray-schema.json not found at {schema_path}"
    schema = json.loads(schema_path.read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    return schema


def _ray_pin() -> str | None:
    constraints = REPO / "constraints.txt"
    if not constraints.is_file():
        return None
    for line in constraints.read_text().splitlines():
        m = re.match(r"^ray(?:\[[^\]]*\])?==([^\s;#]+)", line.strip())
        if m:
            return m.group(1)
    return None


def test_launcher_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"aws.yaml", "gcp.yaml"} <= names, f"launcher configs found: {sorted(names)}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_matches_ray_schema(path: Path, ray_schema: dict):
    config = _load(path)
    validator_cls = jsonschema.validators.validator_for(ray_schema)
    errors = sorted(validator_cls(ray_schema).iter_errors(config), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{path.name}: {'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_node_types_consistent(path: Path):
    config = _load(path)
    node_types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in node_types, f"head_node_type {head!r} not in available_node_types"
    workers = [name for name in node_types if name != head]
    assert workers, "expected at least one worker node type"
    for name in workers:
        assert node_types[name].get("max_workers", 0) <= config["max_workers"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_docker_image_pinned(path: Path):
    docker = _load(path).get("docker") or {}
    images = [docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)]
    assert images, "docker.image must be set"
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"image {image!r} has no tag"
        assert tag != "latest" and "nightly" not in tag, f"image {image!r} is not pinned"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"image {image!r} tag has no version"
        pin = _ray_pin()
        if pin and name.startswith("rayproject/ray"):
            assert tag.split("-")[0] == pin, (
                f"image {image!r} does not match ray=={pin} in constraints.txt"
            )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_installs_rayft_from_synced_tree(path: Path):
    config = _load(path)
    mounts = config.get("file_mounts") or {}
    remote = next((r for r, local in mounts.items() if local in (".", "./")), None)
    assert remote, "file_mounts must sync the working tree ('.') to the nodes"
    commands = " ".join(config.get("setup_commands") or [])
    assert f"-c {remote}/constraints.txt" in commands, "pip install must use constraints.txt"
    assert f"{remote}[serve]" in commands, "setup_commands must install rayft[serve]"


def test_dockerfile_pins_everything():
    text = (CLUSTER_DIR / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    name, _, tag = base.rpartition(":")
    pin = _ray_pin()
    assert name == "rayproject/ray" and (pin is None or tag.split("-")[0] == pin), base
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert "torch==2.13.0" in text
