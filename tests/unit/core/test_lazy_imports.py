"""Light modules stay light: importing the store or validating a config does not import Ray Train, Ray Tune or
the training and sweep drivers, and the lazy stage packages still hand out every public name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import REPO

# Modules that only training, sweeping or serving need.
HEAVY = ("ray.train", "ray.tune", "ray.serve", "deepspeed", "rayft.train.run", "rayft.train.worker",
         "rayft.train.engine", "rayft.sweep.run", "rayft.sweep.trial", "rayft.sweep.hub")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in sys.modules if m.startswith({HEAVY!r})]))\n"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_store_imports_no_driver():
    assert _loaded_after("import rayft.store\nimport rayft.store.export\nimport rayft.train.handoff") == []


def test_validating_a_config_imports_no_driver():
    code = ("from rayft.config import load_config\nfrom rayft.config.checks import registered_checks\n"
            "assert registered_checks()\nload_config('experiments/pbt_lora.yaml')")
    assert _loaded_after(code) == []


@pytest.mark.parametrize("package", ["rayft", "rayft.train", "rayft.sweep"])
def test_every_public_name_resolves(package):
    code = (f"import {package} as p\nmissing = [n for n in p.__all__ if getattr(p, n, None) is None]\n"
            "assert not missing, missing")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_an_unknown_name_is_an_attribute_error():
    import rayft.sweep
    import rayft.train

    for package in (rayft.train, rayft.sweep):
        with pytest.raises(AttributeError, match="no_such_name"):
            getattr(package, "no_such_name")
