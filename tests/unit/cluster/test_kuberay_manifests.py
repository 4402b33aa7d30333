"""Validate cluster/kuberay/*.yaml against the KubeRay CRDs' openAPIV3Schema (no Kubernetes API needed)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
import yaml

from tests.support import FIXTURES, REPO

jsonschema = pytest.importorskip("jsonschema")

MANIFESTS = sorted((REPO / "cluster" / "kuberay").glob("*.yaml"))
CRDS = Path(os.environ.get("RAYFT_KUBERAY_CRDS") or FIXTURES / "kuberay-crds")
KINDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
         "RayService": "ray.io_rayservices.yaml"}


def _strict(node):
    """Reject unknown fields, as ``kubectl apply`` does with strict field validation (the default since 1.27)."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node and not node.get(
                "x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


def _load(text: str):
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _schema(kind: str, version: str) -> dict:
    path = CRDS / KINDS[kind]
    packed = path.with_name(path.name + ".gz")
    assert path.is_file() or packed.is_file(), f"KubeRay CRD {path.name} not found in {CRDS} (RAYFT_KUBERAY_CRDS)"
    crd = _load(path.read_text() if path.is_file() else gzip.decompress(packed.read_bytes()).decode())
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{kind} {version} is not served by the CRD; served: {sorted(served)}"
    schema = served[version]["schema"]["openAPIV3Schema"]
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is not part of the CRD schema
    return _strict(schema)


def test_every_kind_has_a_manifest():
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in MANIFESTS}
    assert kinds == set(KINDS)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_crd_schema(path: Path):
    doc = yaml.safe_load(path.read_text())
    group, _, version = doc["apiVersion"].partition("/")
    assert group == "ray.io"
    schema = _schema(doc["kind"], version)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{path.name}: {'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_check_catches_a_typo():
    doc = _load((REPO / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    doc["spec"]["headGroupSpec"]["rayStartParam"] = {}
    doc["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    errors = list(jsonschema.Draft7Validator(_schema("RayCluster", "v1")).iter_errors(doc))
    assert len(errors) == 2, [e.message for e in errors]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_images_pinned_and_ray_version_matches(path: Path):
    text = path.read_text()
    doc = yaml.safe_load(text)
    spec = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
    assert spec["rayVersion"] == "2.60.0"
    images = [line.split("image:")[1].strip() for line in text.splitlines() if line.strip().startswith("image:")]
    assert images and all(":" in i and not i.endswith(":latest") and "ray2.60.0" in i for i in images), images
    assert spec["authOptions"]["mode"] == "token"


def test_rayservice_uses_the_rayft_app_builder():
    doc = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    app = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]
    from rayft.serve.app import AppArgs

    assert app["import_path"] == "rayft.serve.app:app_builder"
    AppArgs.model_validate(app["args"])  # the same validation the builder applies
