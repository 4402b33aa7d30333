"""The boundary around Ray's private APIs also holds every use of a private attribute of a Ray object and every
call into Ray Train's internal worker group: the attributes it reads still exist, and no other module touches them."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from rayft import ray_internals

PACKAGE = Path(ray_internals.__file__).resolve().parent
BOUNDARY = PACKAGE / "ray_internals.py"
WORKER_GROUP_PARAMETER = "worker_group"  # the name rayft gives the worker group Ray Train hands its callbacks


def _ray_class(owner: str) -> type:
    module, cls = owner.split(":")
    return ray_internals.resolve(module, cls)


def _sets(cls: type, attribute: str) -> bool:
    """Whether ``cls`` or one of its bases has the class attribute ``attribute`` or a method assigning
    ``self.<attribute>``."""
    for klass in cls.__mro__[:-1]:
        if attribute in vars(klass):
            return True
        tree = ast.parse(inspect.getsource(klass).strip())
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Attribute) and t.attr == attribute and isinstance(t.value, ast.Name)
                   and t.value.id == "self" for t in targets):
                return True
    return False


def test_every_private_attribute_rayft_reads_is_still_set_by_ray():
    import ray

    missing = [f"rayft.ray_internals: {owner}.{name} (read or set by rayft) is no longer set in this version of Ray"
               for owner, names in ray_internals.PRIVATE_ATTRIBUTES.items() for name in names
               if not _sets(_ray_class(owner), name)]
    assert not missing, f"Ray {ray.__version__} moved private APIs rayft uses:\n" + "\n".join(missing)


def _ray_bases(module: str, class_name: str) -> list[type]:
    cls = getattr(importlib.import_module(module), class_name)
    if not inspect.isclass(cls):  # wrapped by a decorator (a Serve deployment): not a subclass of Ray's
        return []
    return [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] == "ray"]


def _imported_from_ray(tree: ast.AST) -> set[str]:
    """Names a source file imports from Ray or from the boundary (candidates for a Ray base class)."""
    return {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
            and (n.module.split(".")[0] == "ray" or n.module == "rayft.ray_internals") for a in n.names}


def _private_of(bases: list[type], name: str) -> bool:
    """Whether ``name`` is a class attribute of one of the Ray ``bases`` or an instance attribute they set."""
    return bool(bases) and _sets(bases[0], name)


def private_attribute_uses(path: Path, module: str) -> list[str]:
    """In one source file (module ``module``): ``self._x`` and class-body ``_x = ...`` where ``_x`` belongs to a
    Ray base class of the enclosing class, and any use of a parameter named ``worker_group`` other than handing
    it on (Ray Train's internal class)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == WORKER_GROUP_PARAMETER:
            found.append(f"{WORKER_GROUP_PARAMETER}.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len" \
                and any(isinstance(a, ast.Name) and a.id == WORKER_GROUP_PARAMETER for a in node.args):
            found.append(f"len({WORKER_GROUP_PARAMETER})")
    from_ray = _imported_from_ray(tree)
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        if not any(_dotted_root(b) in from_ray for b in cls.bases):
            continue
        names = {t.id for n in cls.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        names |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                  and n.value.id == "self"}
        private = sorted(n for n in names if n.startswith("_") and not n.endswith("__"))
        if private and (bases := _ray_bases(module, cls.name)):
            found += [f"{cls.name}.{name}" for name in private if _private_of(bases, name)]
    return sorted(set(found))


def _dotted_root(node: ast.AST) -> str:
    while isinstance(node, (ast.Attribute, ast.Call)):
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return node.id if isinstance(node, ast.Name) else ""


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def test_no_module_outside_the_boundary_touches_private_attributes_of_ray_objects():
    offenders = {str(p.relative_to(PACKAGE.parent)): uses for p in sorted(PACKAGE.rglob("*.py"))
                 if p != BOUNDARY and (uses := private_attribute_uses(p, _module(p)))}
    assert not offenders, f"reach Ray objects' private attributes through rayft.ray_internals only: {offenders}"
    assert private_attribute_uses(BOUNDARY, _module(BOUNDARY))  # the scan does see them where they are


@pytest.mark.parametrize("source, expected", [
    ("from ray.tune.schedulers import PopulationBasedTraining\n"
     "class S(PopulationBasedTraining):\n    def f(self):\n        return self._synch\n", ["S._synch"]),
    ("from ray.tune.schedulers import PopulationBasedTraining\n"
     "class S(PopulationBasedTraining):\n    def f(self):\n        self._mine = 1\n", []),
    ("def on_start(worker_group):\n    return len(worker_group), worker_group.execute(print)\n",
     ["len(worker_group)", "worker_group.execute"]),
])
def test_the_scan_finds_private_uses_and_only_those(tmp_path, monkeypatch, source, expected):
    (tmp_path / "probe_ray_uses.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert private_attribute_uses(tmp_path / "probe_ray_uses.py", "probe_ray_uses") == expected
