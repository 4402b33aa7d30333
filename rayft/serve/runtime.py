"""Models inside one serving replica, free of Ray: shared bases with hot-swapped peft adapters.

A base model is loaded once per :func:`rayft.store.base_key` and wrapped as one ``PeftModel``; each stored
adapter is ``load_adapter``-ed into it under its own name and, when evicted, either kept as a free slot that the
next adapter of the same config is copied into, or removed with ``delete_adapter``. Full-weight results load as
models of their own. One re-entrant lock serializes whatever runs a model or changes its modules (``set_adapter``
+ forward, ``load_adapter``, ``delete_adapter``), so requests never see another's adapter; refilling a free slot
needs no model lock, so adapter churn does not wait for forward passes.

Generation runs on decode engines (:mod:`rayft.generate`): one per shared base, serving the bare base and every
adapter on it in one continuous batch, and one per model of its own; each engine steps on its own thread while it
holds the pool's lock, so adapter loads and deletions happen between steps. An adapter stays loaded while a request
runs on it (pinned), so no step ever meets a deleted adapter.

This module loads and evicts models only; what runs them (tokenizing, forward passes, generation) is
:mod:`rayft.serve.infer`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from rayft.errors import StoreError
from rayft.generate.device import accelerate
from rayft.generate.metrics import GenerationMetrics
from rayft.serve.api import BASE_PREFIX, SFT_TASK, ServeError, load_error, not_found, short_error
from rayft.store import AdapterStore, Manifest, base_key, load_base, load_for_inference
from rayft.tasks.prompt_format import for_manifest

logger = logging.getLogger("ray.serve")  # inside replicas, Serve writes it to the replica log files
EVICTED = object()  # returned by LoadedModel.run when the model was evicted before the request got the lock


class BaseEntry:
    """One loaded base model and the ``PeftModel`` that hot-swaps adapters on it.

    With ``spare_slots`` > 0, an evicted adapter's modules stay in the model as a free slot: the next adapter
    with the same peft config is copied into that slot's tensors instead of being injected anew by
    ``load_adapter`` (which walks the model) and deleted again later. A free slot belongs to no request, so filling
    it needs only ``slots`` and runs while other adapters' forward passes hold the pool's ``lock``; anything that
    changes the model's modules (``load_adapter``, ``delete_adapter``) takes ``lock``.
    """

    def __init__(self, manifest: Manifest, lock: threading.RLock, spare_slots: int = 0,
                 make_loop: Callable[[Any, Any], Any] | None = None) -> None:
        self.manifest, self.lock, self.spare_slots = manifest, lock, spare_slots
        self.slots = threading.Lock()  # guards free / signature / views (never held for long)
        self.model, self.tokenizer, self.fingerprint = _load_base(manifest)
        self.peft: Any = None
        self.make_loop = make_loop
        self.loop: Any = None  # the decode engine's loop, made on the first generation request
        self.retired: set[str] = set()  # evicted but kept: peft cannot delete its last adapter
        self.signature: dict[str, str] = {}  # adapter name -> its peft config, for slot reuse
        self.free: dict[str, list[str]] = {}  # peft config -> free slots (evicted adapter names)
        self.views: dict[str, dict[str, torch.Tensor]] = {}  # slot -> its parameters by saved key

    def attach(self, folder: Path, name: str) -> str:
        """Load an adapter (into a free slot of the same config, else under ``name``); returns its name.

        On failure the base is left as it was.

        Raises:
            Exception: whatever peft raised for an unreadable adapter.
        """
        sig = _signature(folder) if self.spare_slots else None
        slot = self._take_free(sig)
        if slot is not None:
            try:
                filled = self._fill(slot, folder)
            except Exception:
                with self.lock:
                    self._drop(slot)  # half-copied: never reuse it
                raise
            if filled:
                self._changed()
                return slot
            with self.lock:
                self._drop(slot)  # the weights did not fit the slot: load them the usual way
        with self.lock:
            self._load(folder, name)
            if sig:  # views of its parameters by saved key, for refilling it later (walks the model once)
                from peft import get_peft_model_state_dict

                views = get_peft_model_state_dict(self.peft, adapter_name=name)
                with self.slots:
                    self.signature[name], self.views[name] = sig, views
            self._changed()
        return name

    def generator(self) -> Any:
        """The running :class:`~rayft.generate.EngineLoop` of this base (the bare base and all its adapters).

        Once made, it is returned without any lock; making it takes :attr:`lock` (so no adapter load swaps the
        model meanwhile), which can wait for a decode step: call it off the event loop the first time.
        """
        if self.loop is None:
            with self.lock:
                if self.loop is None:
                    self.loop = self.make_loop(self.peft if self.peft is not None else self.model, self.tokenizer)
        return self.loop

    def _serve(self, model: Any) -> None:
        """Points the decode engine at ``model`` (the base wrapped anew, or loaded again); lock held."""
        if self.loop is not None:
            self.loop.engine.set_model(model)

    def close(self) -> None:
        if self.loop is not None:
            self.loop.stop()

    def _changed(self) -> None:
        """Adapters were loaded, refilled or deleted: the engine gathers LoRA weights anew."""
        if self.loop is not None:
            self.loop.engine.adapters_changed()

    def _take_free(self, sig: str | None) -> str | None:
        with self.slots:
            return self.free[sig].pop() if sig and self.free.get(sig) else None

    def _load(self, folder: Path, name: str) -> None:
        """``load_adapter`` (or the first ``PeftModel``) under ``name``; lock held."""
        from peft import PeftModel

        fresh = self.peft is None
        try:
            if fresh:
                self.peft = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name).eval()
                self._serve(self.peft)
            else:
                self.peft.load_adapter(str(folder), adapter_name=name)
        except Exception:
            if fresh:  # from_pretrained may have injected layers into the base: start over from disk
                self.peft = None
                self.model, self.tokenizer, self.fingerprint = _load_base(self.manifest)
                self._serve(self.model)
            elif name in self.peft.peft_config:
                self._delete(name)
            raise
        for old in self.retired - {name}:
            self._delete(old)
        self.retired.clear()

    def _fill(self, slot: str, folder: Path) -> bool:
        """Copy an adapter's saved weights into a free slot's tensors; False if they do not match."""
        from safetensors.torch import load_file

        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            return False
        saved = load_file(str(weights))
        target = self.views.get(slot)
        if saved.keys() != (target or {}).keys() or any(saved[k].shape != target[k].shape for k in saved):
            return False
        with torch.no_grad():
            for key, value in saved.items():
                target[key].copy_(value)
        return True

    def detach(self, name: str) -> None:
        """Free an adapter no request uses any more: keep it as a slot, or delete it."""
        if self.peft is None or name not in self.peft.peft_config:
            return
        with self.slots:
            sig = self.signature.get(name)
            if sig and name in self.views and sum(map(len, self.free.values())) < self.spare_slots:
                self.free.setdefault(sig, []).append(name)
                return
        with self.lock:
            self._drop(name)

    def _drop(self, name: str) -> None:
        if len(self.peft.peft_config) > 1:
            self._delete(name)
        else:
            self.retired.add(name)

    def _delete(self, name: str) -> None:
        with self.slots:
            self.signature.pop(name, None)
            self.views.pop(name, None)
        with warnings.catch_warnings():  # "adapter X was active which is now deleted": set per request anyway
            warnings.simplefilter("ignore", UserWarning)
            self.peft.delete_adapter(name)
        self._changed()


def _signature(folder: Path) -> str | None:
    """An adapter's peft config as a key: adapters with equal keys have tensors of equal names and shapes."""
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    if cfg.get("peft_type") != "LORA":
        return None
    for key in ("base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version"):
        cfg.pop(key, None)
    for key in ("target_modules", "modules_to_save"):  # sets in peft; saved lists may repeat or reorder names
        if isinstance(cfg.get(key), list):
            cfg[key] = sorted(set(cfg[key]))
    return json.dumps(cfg, sort_keys=True, default=str)


class LoadedModel:
    """What the multiplexed loader hands to Serve; Serve calls ``__del__`` when it evicts it (LRU)."""

    def __init__(self, pool: "ModelPool", model_id: str, task: str, tokenizer: Any, *, model: Any = None,
                 entry: BaseEntry | None = None, adapter: str | None = None, manifest: Manifest | None = None):
        from rayft.tasks.base import serving_task

        self.pool, self.model_id, self.task, self.tokenizer = (pool, model_id, serving_task(
            task, manifest.config if manifest else None), tokenizer)
        self.model, self.entry, self.adapter, self.manifest = model, entry, adapter, manifest
        self.labels = list(manifest.labels or []) if manifest and manifest.labels else None
        self.max_length = manifest.max_length if manifest else 128
        self.prompt_format = for_manifest(manifest, tokenizer)  # renders requests exactly as training did
        self.closed = self.evicting = False
        self.users = 0
        self.loop: Any = None  # a model of its own: its decode engine's loop, made on the first generation request
        self.making = threading.Lock()  # guards making that loop

    def has_generator(self) -> bool:
        """Whether :meth:`generator` answers at once (its engine loop exists)."""
        return (self.entry.loop if self.entry is not None else self.loop) is not None

    def generator(self) -> tuple[Any, str | None]:
        """The :class:`~rayft.generate.EngineLoop` that generates with this model, and the adapter to ask it for
        (None: the bare model). May wait for a decode step the first time (see :meth:`BaseEntry.generator`)."""
        if self.entry is not None:
            return self.entry.generator(), self.adapter
        from rayft.generate.runners import policy_adapter

        with self.making:  # a model of its own: nothing else changes it, the pool's lock is not needed
            if self.closed:
                raise RuntimeError(f"model {self.model_id} was unloaded")
            if self.loop is None:
                self.loop = self.pool.make_loop(self.model, self.tokenizer)
        # a PeftModel of its own (IA3, prompt learning, ...) generates with its adapter, not without it
        return self.loop, policy_adapter(self.model)

    def run(self, fn: Callable[["LoadedModel", Any], Any]) -> Any:
        """``fn(self, model)`` with this model's adapter active, or :data:`EVICTED` if it was evicted."""
        with self.pool.lock:
            if self.closed:
                return EVICTED
            ctx: Any = contextlib.nullcontext()
            if self.entry is None:
                model = self.model
            elif self.adapter is not None:
                model = self.entry.peft
                activate(model, self.adapter)
            else:  # the plain base model of an sft adapter
                model = self.entry.model if self.entry.peft is None else self.entry.peft
                if self.entry.peft is not None:
                    ctx = self.entry.peft.disable_adapter()
            with ctx, torch.no_grad():
                return fn(self, model)

    def acquire(self) -> bool:
        """Pin the model for one request (an LRU eviction then waits for :meth:`release`); False if closed."""
        with self.pool.pins:
            if self.closed or self.evicting:
                return False
            self.users += 1
            return True

    def release(self) -> None:
        """Unpin; runs an eviction that came while the model was in use."""
        with self.pool.pins:
            self.users -= 1
            due = self.users == 0 and self.evicting
        if due:
            self._close()

    def close(self) -> None:
        """Release the model (``delete_adapter`` for an adapter), once no request uses it. Safe to call twice."""
        with self.pool.pins:
            self.evicting = True
            due = self.users == 0
        if due:
            self._close()

    def _close(self) -> None:
        with self.pool.pins:  # no request holds the model now, and none can pin it again
            if self.closed:
                return
            self.closed = True
        if self.entry is not None and self.adapter is not None:
            self.entry.detach(self.adapter)
        if self.loop is not None:
            self.loop.stop()
            self.loop = None
        self.model = None
        self.pool.metrics.count("adapter_evictions")
        logger.info("unloaded %s", self.model_id)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


def activate(peft_model: Any, name: str) -> None:
    """``set_adapter`` unless ``name`` is already the active adapter (it walks every module: not free)."""
    if peft_model.active_adapter != name:
        peft_model.set_adapter(name)


class ModelPool:
    """Loads models for one replica by multiplexed key: ``<adapter_id>@<created>`` or ``base:<name>``."""

    def __init__(self, store: AdapterStore, spare_slots: int = 0, engine_config: Any = None,
                 metrics: GenerationMetrics | None = None) -> None:
        self.store, self.spare_slots, self.engine_config = store, spare_slots, engine_config
        self.metrics = metrics or GenerationMetrics()
        self.lock = threading.RLock()  # held while a model loads, runs or unloads, and during each decode step
        self.pins = threading.Lock()  # guards LoadedModel.users / evicting (never held for long)
        self.bases: dict[tuple[str, str, int], BaseEntry] = {}
        self.loops: list[Any] = []  # every decode engine loop made, for the running/queued gauges
        self._count = 0

    def make_loop(self, model: Any, tokenizer: Any) -> Any:
        """A started decode engine loop over ``model`` that steps under :attr:`lock`."""
        from rayft.generate import DecodeEngine, EngineLoop

        engine = DecodeEngine(model, tokenizer, self.engine_config, metrics=self.metrics)
        loop = EngineLoop(engine, lock=self.lock).start()
        with self.pins:
            self.loops = [lp for lp in self.loops if lp.alive] + [loop]
        return loop

    def load_figures(self) -> tuple[int, int]:
        """Sequences running and requests waiting, over every live engine of the pool."""
        with self.pins:
            loops = list(self.loops)
        stats = [lp.engine.stats() for lp in loops if lp.alive]
        return sum(s["running"] for s in stats), sum(s["waiting"] for s in stats)

    def close(self) -> None:
        """Stops every decode engine (the replica is shutting down)."""
        for entry in list(self.bases.values()):
            entry.close()

    def load(self, key: str) -> LoadedModel:
        """Load the model a multiplexed key names.

        Only what changes a model's modules holds :attr:`lock`: reading the store, and copying an adapter into
        a free slot, run while other requests' forward passes do.

        Raises:
            ServeError: 404 for an unknown id, 500 ``model_load_error`` for an unloadable one.
        """
        if key.startswith(BASE_PREFIX):
            with self.lock:
                return self._load_base_model(key[len(BASE_PREFIX):])
        model_id = key.split("@", 1)[0]
        try:
            manifest = self.store.manifest(model_id)
        except StoreError as exc:
            raise (not_found(model_id, str(exc)) if not self.store.exists(model_id)
                   else load_error(model_id, str(exc))) from None
        try:
            loaded = self._load_adapter(manifest) if manifest.swappable else self._load_full(manifest)
            self.metrics.count("adapter_loads")
            return loaded
        except ServeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to load is this adapter's alone
            logger.warning("could not load %s: %s", model_id, exc)
            raise load_error(model_id, short_error(exc)) from None

    def _base(self, manifest: Manifest) -> BaseEntry:
        key = base_key(manifest)
        if key not in self.bases:
            with self.lock:
                if key not in self.bases:
                    self.bases[key] = BaseEntry(manifest, self.lock, self.spare_slots, self.make_loop)
        entry = self.bases[key]
        if manifest.base_fingerprint and manifest.base_fingerprint != entry.fingerprint:
            raise load_error(manifest.adapter_id, f"it was trained on base weights {manifest.base_fingerprint}, "
                                                  f"the loaded base has {entry.fingerprint}")
        return entry

    def _load_adapter(self, manifest: Manifest) -> LoadedModel:
        folder = self.store.path(manifest.adapter_id)
        _check_weights(folder)
        entry = self._base(manifest)
        with self.pins:
            self._count += 1
            count = self._count
        name = f"a{count}_" + re.sub(r"[^A-Za-z0-9_]", "_", manifest.adapter_id)  # module keys: no dots
        name = entry.attach(folder, name)
        logger.info("loaded adapter %s on %s", manifest.adapter_id, manifest.base_model)
        return LoadedModel(self, manifest.adapter_id, manifest.task, entry.tokenizer, entry=entry, adapter=name,
                           manifest=manifest)

    def _load_full(self, manifest: Manifest) -> LoadedModel:
        """A result that cannot share a base (full weights, QLoRA, prompt learning, bottleneck adapters).

        A model of its own touches nothing shared, so it loads without the pool's lock (decode steps go on).
        """
        model, tokenizer, manifest = load_for_inference(self.store, manifest.adapter_id)
        model = accelerate(model)
        return LoadedModel(self, manifest.adapter_id, manifest.task, tokenizer, model=model, manifest=manifest)

    def _load_base_model(self, name: str) -> LoadedModel:
        from rayft.tasks.base import serving_task

        manifest = next((m for m in self.store.list()
                         if m.base_model == name and serving_task(m.task, m.config) == SFT_TASK), None)
        if manifest is None:
            raise not_found(name)
        try:
            entry = self._base(manifest)
        except ServeError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise load_error(name, short_error(exc)) from None
        return LoadedModel(self, name, SFT_TASK, entry.tokenizer, entry=entry)


def _load_base(manifest: Manifest) -> tuple[Any, Any, str]:
    """:func:`load_base`, on the GPU in bfloat16 when there is one."""
    model, tokenizer, fingerprint = load_base(manifest)
    return accelerate(model), tokenizer, fingerprint


def _check_weights(folder: Path) -> None:
    """Read the adapter's safetensors header before touching the shared base (garbage fails here)."""
    from safetensors import safe_open

    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
