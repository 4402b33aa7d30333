"""Warm worker processes: the setup hook's environment, what it imports, and the names it relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rayft.options import PRELOAD_MODEL_TYPE_VAR, PRELOAD_QUANTIZED_VAR, WorkerPreload, worker_preload
from rayft.train import preload


def test_the_setup_hook_variable_is_rays():
    from rayft.ray_internals import SETUP_HOOK_VAR

    assert SETUP_HOOK_VAR == "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"


def test_preload_env_names_the_hook_model_and_sweep():
    from rayft.ray_internals import SETUP_HOOK_VAR

    env = preload.preload_env("bert", False, "sweep-1")
    assert env[SETUP_HOOK_VAR] == preload.HOOK
    assert worker_preload(env) == WorkerPreload(model_type="bert", quantized=False, tag="sweep-1")
    assert env[PRELOAD_MODEL_TYPE_VAR] == "bert" and env[PRELOAD_QUANTIZED_VAR] == "0"
    assert worker_preload({}) == WorkerPreload()  # a process started without the hook
    module, func = preload.HOOK.rsplit(".", 1)
    assert module == preload.__name__ and callable(getattr(preload, func))


def test_model_type_and_its_transformers_module(tiny_bert, tmp_path):
    assert preload.model_type(str(tiny_bert)) == "bert"
    assert preload.model_type(str(tmp_path)) == ""  # no config.json
    assert preload._modeling_module("bert") == "transformers.models.bert.modeling_bert"
    assert preload._modeling_module("") == ""
    assert preload._modeling_module("x; import os") == ""


def test_warm_env_marks_quantizing_methods():
    from types import SimpleNamespace

    from rayft.sweep.warm import warm_env

    def method(name):
        return SimpleNamespace(method=SimpleNamespace(name=name))

    assert worker_preload(warm_env(method("qlora"), "bert", "s")).quantized
    assert not worker_preload(warm_env(method("lora"), "bert", "s")).quantized


def test_the_hook_imports_the_training_stack_without_bitsandbytes():
    """In a fresh interpreter, as in a process Ray starts: modules imported, bitsandbytes kept out."""
    code = ("import json, sys\nfrom rayft.train import preload\nassert preload.warm_since is None\n"
            "preload.import_training_stack()\n"
            "print(json.dumps({'warm': preload.warm_since is not None, 'bnb': sys.modules.get('bitsandbytes', 0),"
            " 'mods': [m for m in ('deepspeed.runtime.engine', 'peft', 'transformers.models.bert.modeling_bert',"
            " 'rayft.train.worker') if m in sys.modules]}))")
    env = {**os.environ, **WorkerPreload(model_type="bert", quantized=False).env()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["warm"] and result["bnb"] is None
    assert len(result["mods"]) == 4
