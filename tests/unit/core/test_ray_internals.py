"""The boundary around Ray's private APIs: everything it names still exists, and nothing else in rayft uses them."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from rayft import ray_internals

PACKAGE = Path(ray_internals.__file__).resolve().parent
BOUNDARY = PACKAGE / "ray_internals.py"
PRIVATE_PARTS = {"_private", "_internal", "_raylet"}


def test_every_private_ray_symbol_rayft_uses_is_where_the_boundary_expects_it():
    """Fails after a Ray upgrade that moved one, naming rayft.ray_internals and each symbol that moved."""
    import ray

    missing = []
    for name, (module, attribute) in ray_internals.PRIVATE.items():
        try:
            ray_internals.resolve(module, attribute, name)
        except ray_internals.RayMovedError as exc:
            missing.append(str(exc))
    for owner, methods in ray_internals.OVERRIDDEN.items():
        module, cls = owner.split(":")
        try:
            found = ray_internals.resolve(module, cls)
        except ray_internals.RayMovedError as exc:
            missing.append(str(exc))
            continue
        missing += [f"rayft.ray_internals: {owner}.{m} (overridden or called by rayft) is not in this version of Ray"
                    for m in methods if not callable(getattr(found, m, None))]
    policy = ray_internals.LocalScalingPolicy  # built on first use from Ray's FixedScalingPolicy
    assert issubclass(policy, ray_internals.FixedScalingPolicy) and policy.__module__ == "rayft.ray_internals"
    assert not missing, f"Ray {ray.__version__} moved private APIs rayft uses:\n" + "\n".join(missing)


def test_a_moved_symbol_is_reported_with_the_boundary_and_its_name():
    with pytest.raises(ray_internals.RayMovedError, match=r"rayft\.ray_internals: WorkerGroupCallback .*ray\.gone\.x"):
        ray_internals.resolve("ray.gone", "x", "WorkerGroupCallback")
    with pytest.raises(AttributeError):
        ray_internals.nothing_of_that_name  # noqa: B018


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _is_private_ray(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] == "ray" and bool(PRIVATE_PARTS & set(parts))


def private_ray_uses(path: Path) -> list[str]:
    """Imports of private Ray modules and names, ``ray._private...`` attribute chains, and overrides of a Ray
    class's private methods in one source file."""
    tree = ast.parse(path.read_text(), str(path))
    from_ray = set()  # names this file imports from Ray (or from the boundary)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_private_ray(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "ray" or node.module == "rayft.ray_internals":
                from_ray |= {a.asname or a.name for a in node.names}
            if _is_private_ray(node.module):
                found.append(node.module)
            elif node.module.split(".")[0] == "ray":
                found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and _is_private_ray(_dotted(node)):
            found.append(_dotted(node))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _is_private_ray(node.value):
            if " " not in node.value:  # a module named in a string (importlib), not prose
                found.append(node.value)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(_dotted(b).split(".")[0] in from_ray for b in node.bases):
            private = [f.name for f in node.body if isinstance(f, ast.FunctionDef)
                       and f.name.startswith("_") and not f.name.endswith("__")]
            found += [f"{node.name}.{name}" for name in _overridden(path, node.name, private)]
    return sorted(set(found))


def _overridden(path: Path, class_name: str, names: list[str]) -> list[str]:
    """Those of ``names`` that the class overrides in one of its Ray base classes (its own helpers are fine)."""
    if not names:
        return []
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    cls = getattr(importlib.import_module(module), class_name)
    ray_bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] == "ray"]
    return [name for name in names if any(name in vars(b) for b in ray_bases)]


def test_no_module_outside_the_boundary_uses_a_private_ray_api():
    offenders = {str(p.relative_to(PACKAGE.parent)): uses for p in sorted(PACKAGE.rglob("*.py"))
                 if p != BOUNDARY and (uses := private_ray_uses(p))}
    assert not offenders, f"use Ray's private APIs through rayft.ray_internals only: {offenders}"
    assert private_ray_uses(BOUNDARY)  # the scan does see them where they are


def test_the_boundary_imports_no_part_of_ray_until_asked():
    import subprocess
    import sys

    code = "import sys, rayft.ray_internals; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert importlib.import_module("rayft.ray_internals") is ray_internals
