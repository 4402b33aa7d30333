"""The lean start-up: which processes import what, and the torch-free backend config Ray Train ships around."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import cls_config


def test_worker_side_functions_of_ray_torch_config_exist():
    from rayft import ray_internals

    shipped = [name for name, (module, _) in ray_internals.PRIVATE.items() if module == "ray.train.torch.config"]
    assert len(shipped) == 4 and all(callable(getattr(ray_internals, name)) for name in shipped)


def test_worker_torch_config_describes_itself_as_ray_torch_config_does():
    from ray.train.torch import TorchConfig

    from rayft.ray_internals import TrainingFramework
    from rayft.train.backend import WorkerDeviceContext, WorkerTorchBackend, WorkerTorchConfig

    ours, rays = WorkerTorchConfig(backend="gloo", timeout_s=60), TorchConfig(backend="gloo", timeout_s=60)
    assert ours.to_dict() == rays.to_dict()
    assert ours.framework == rays.framework == TrainingFramework.TORCH
    assert ours.backend_cls is WorkerTorchBackend and WorkerTorchBackend.share_cuda_visible_devices
    with WorkerDeviceContext():  # Ray's context manager underneath: a no-op without CUDA
        pass


def test_the_trial_and_controller_side_never_import_torch(tiny_bert, sentiment_csv, tmp_path):
    """What the Tune trial actor and the Ray Train controller load: the trainer, its backend config, the entry."""
    from rayft.config import build_config, dump_config

    raw = tmp_path / "experiment.json"  # what the trial receives: the driver's validated, dumped config
    raw.write_text(json.dumps(dump_config(build_config(cls_config(tiny_bert, sentiment_csv, tmp_path)))))
    script = f"""
import json, pickle, sys
from rayft.sweep.run import apply_sample
from rayft.sweep.trial import rayft_trial  # noqa: F401  (the trial function's module)
from rayft.train.run import make_trainer
from rayft.sweep.hub import hub_callbacks  # the trial's Train callbacks (they run on the controller)
trainer = make_trainer(apply_sample(json.load(open({str(raw)!r})), {{"train.lr": 1e-3}}), None, run_name="t", storage_path={str(tmp_path)!r},
                       callbacks=hub_callbacks(None, "t@0"))
import ray.cloudpickle
from rayft.ray_internals import LocalScalingPolicy  # what the controller gets on a Ray started by rayft
policy = LocalScalingPolicy(trainer.scaling_config)
shipped = ray.cloudpickle.loads(ray.cloudpickle.dumps((trainer.backend_config, trainer.train_loop_per_worker, trainer.run_config.callbacks, policy)))
assert type(shipped[3]) is LocalScalingPolicy  # by reference: the controller imports rayft.ray_internals
print(json.dumps(sorted(m for m in ("torch", "transformers", "peft", "deepspeed") if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_only_quantizing_methods_keep_bitsandbytes_in_their_workers():
    from rayft.methods import METHODS
    from rayft.train.entry import QUANTIZED_METHODS

    assert {n for n in METHODS if getattr(METHODS.get(n), "quantized", False)} == set(QUANTIZED_METHODS)
    script = """
import importlib.util, json, sys
from rayft.train.entry import skip_unused_imports
skip_unused_imports("{method}")
try:
    import bitsandbytes  # noqa: F401
    imported = True
except ImportError:
    imported = False
print(json.dumps([imported, importlib.util.find_spec("bitsandbytes") is not None]))
"""
    runs = {m: subprocess.run([sys.executable, "-c", script.format(method=m)], capture_output=True, text=True,
                              check=True).stdout.strip().splitlines()[-1] for m in ("lora", "qlora")}
    assert json.loads(runs["lora"]) == [False, False]  # peft and transformers see it as not installed
    assert json.loads(runs["qlora"]) == [True, True]


def test_deepspeed_ops_are_cached_per_environment(monkeypatch, tmp_path):
    """Two virtualenvs never share a JIT folder (each would rebuild the other's ops); one keeps its own."""
    import os
    import sys

    from rayft import paths

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"})
    os.environ["RAYFT_CACHE"] = str(tmp_path)
    monkeypatch.setattr(sys, "prefix", "/checkouts/one/.venv")
    one = paths.extensions_dir()
    monkeypatch.setattr(sys, "prefix", "/checkouts/two/.venv")
    two = paths.extensions_dir()
    assert one != two and one.parent == two.parent == tmp_path / "torch_extensions" and two.is_dir()
    assert paths.extensions_dir() == two
    paths.setup_env()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(two)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "mine")  # an explicit choice wins
    paths.setup_env()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "mine")


def test_the_local_scaling_policy_decides_as_rays_fixed_one_without_a_coordinator():
    """On a Ray rayft started there is no autoscaler: the same decisions, and no coordinator actor asked or made."""
    from types import SimpleNamespace

    from ray.train import ScalingConfig
    from ray.train.v2._internal.execution.scaling_policy import NoopDecision, ResizeDecision

    from rayft.ray_internals import FixedScalingPolicy, LocalScalingPolicy

    scaling = ScalingConfig(num_workers=3, resources_per_worker={"CPU": 2})
    ours, rays = LocalScalingPolicy(scaling), FixedScalingPolicy(scaling)
    ours.after_controller_start(SimpleNamespace(run_id="abc"))  # Ray's would create the coordinator here
    assert ours._requester_id == "train-abc" and ours._coordinator_client is None
    decision = ours.make_decision_for_non_running_worker_group()
    assert isinstance(decision, ResizeDecision) and decision.num_workers == 3
    assert decision.resources_per_worker == scaling._resources_per_worker_not_none
    assert isinstance(ours.make_decision_for_running_worker_group(None, None), NoopDecision)
    assert ours._get_num_workers_for_resource_request() == rays._get_num_workers_for_resource_request() == 3
    ours.before_controller_abort()  # nothing to cancel


def test_a_quiet_local_ray_keeps_task_events_for_the_dashboard_and_restores_the_environment(monkeypatch):
    from rayft.cluster import (DASHBOARD_NEEDS, QUIET_AGENT_ENV, QUIET_NODE_ENV, QUIET_SYSTEM_CONFIG, environ,
                               quiet_settings)

    for key in (*QUIET_AGENT_ENV, *QUIET_NODE_ENV):
        monkeypatch.delenv(key, raising=False)
    config, env = quiet_settings(dashboard=False)
    assert config == QUIET_SYSTEM_CONFIG and env == {**QUIET_NODE_ENV, **QUIET_AGENT_ENV}
    config, env = quiet_settings(dashboard=True)  # the dashboard shows task events and the agents' statistics
    assert not set(DASHBOARD_NEEDS) & set(config) and env == QUIET_NODE_ENV
    monkeypatch.setenv("RAYFT_TEST_KEPT", "before")
    with environ({"RAYFT_TEST_ENV": "1", "RAYFT_TEST_KEPT": "inside"}):
        assert os.environ["RAYFT_TEST_ENV"] == "1" and os.environ["RAYFT_TEST_KEPT"] == "inside"
    assert "RAYFT_TEST_ENV" not in os.environ and os.environ["RAYFT_TEST_KEPT"] == "before"
    monkeypatch.setenv("REPORTER_UPDATE_INTERVAL_MS", "7")  # the user's own setting wins
    assert quiet_settings(dashboard=False)[1] == QUIET_NODE_ENV
    assert quiet_settings(dashboard=False, quiet=False) == (None, {})  # StartupOptions(quiet_ray=False)
