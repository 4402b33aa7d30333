"""``ModelServer``: the Serve deployment that runs one base model's adapters (one deployment per base model).

Each replica loads the base once and hot-swaps adapters with ``@serve.multiplexed`` (LRU of ``max_adapters``
resident models). Classification requests are gathered by ``@serve.batch``: requests for different LoRA
adapters on the base share one forward pass (peft mixed-adapter batches). Generation requests go to the base's
decode engine (:mod:`rayft.generate`), which batches them continuously across adapters; beyond its limits a request
is refused with 429. Models come from :mod:`rayft.serve.runtime`, answers from :mod:`rayft.serve.infer`; this class
adds Serve's multiplexing, batching, pinning against eviction, the threads that keep the event loop free and the
push of the replica's figures to ``/metrics``.
"""

# No ``from __future__ import annotations``: Serve inspects these methods.
import asyncio
import logging
import os
from typing import Any, AsyncIterator, Callable

from ray import serve

from rayft.generate.params import SamplingParams
from rayft.serve import defaults, infer, runtime
from rayft.serve.defaults import GenerationLimits
from rayft.serve.api import CLASSIFY_TASK, SFT_TASK, Piece, ServeError, evicted, inference_failed
from rayft.store import AdapterStore

logger = logging.getLogger("ray.serve")
PIN_TRIES = 5


@serve.deployment(ray_actor_options={"num_cpus": defaults.NUM_CPUS}, max_ongoing_requests=64)
class ModelServer:
    """Per replica: bases loaded once per ``base_key``, adapters multiplexed on them (LRU, ``max_adapters``)."""

    def __init__(self, store: str, max_adapters: int = defaults.MAX_ADAPTERS,
                 max_batch_size: int = defaults.MAX_BATCH_SIZE,
                 batch_wait_s: float = defaults.BATCH_WAIT_MS / 1000,
                 limits: GenerationLimits = GenerationLimits(), app: str = defaults.APP_NAME) -> None:
        from rayft.paths import quiet_libraries, setup_env

        setup_env()
        quiet_libraries()
        import torch

        from rayft.serve.metrics import Pusher

        torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1")))))
        self.request_timeout_s = limits.request_timeout_s
        self.pool = runtime.ModelPool(AdapterStore(store), spare_slots=max_adapters, engine_config=limits)
        rid = serve.get_replica_context().replica_id
        replica = f"{rid.deployment_id.name}#{rid.unique_id}"
        self.pusher = Pusher(app, replica, lambda: self.pool.metrics.snapshot(*self.pool.load_figures()))

        async def _load_model(key: str) -> runtime.LoadedModel:
            return await asyncio.to_thread(self.pool.load, key)

        # Wired per instance so the LRU size is an argument (Serve detects instance-level multiplexing).
        self.get_model = serve.multiplexed(max_num_models_per_replica=max_adapters)(_load_model)
        self.classify_batch.set_max_batch_size(max_batch_size)
        self.classify_batch.set_batch_wait_timeout_s(batch_wait_s)

    def __del__(self) -> None:  # Serve calls it when the replica shuts down (also after a failed __init__)
        pusher, pool = getattr(self, "pusher", None), getattr(self, "pool", None)
        if pusher is not None:
            pusher.stop()
        if pool is not None:
            pool.close()

    async def _pin(self, task: str) -> runtime.LoadedModel:
        """The request's model, loaded and pinned against eviction until ``_unpin``."""
        key = serve.get_multiplexed_model_id()
        if not key:
            raise ServeError(400, "no model given", "invalid_request_error", "model_required")
        for _ in range(PIN_TRIES):  # evicted between loading and pinning: load again
            loaded = await self.get_model(key)
            if task and loaded.task != task:
                raise ServeError(400, f"model {loaded.model_id!r} is a {loaded.task!r} model, not {task!r}",
                                 "invalid_request_error", "wrong_task")
            if loaded.acquire():
                return loaded
        raise evicted()

    @staticmethod
    async def _unpin(loaded: runtime.LoadedModel) -> None:
        if loaded.evicting:  # the eviction runs now: off the event loop
            await asyncio.to_thread(loaded.release)
        else:
            loaded.release()

    async def _guarded(self, fn: Callable[[], Any]) -> dict[str, Any]:
        try:
            return {"result": await fn()}
        except ServeError as exc:
            return {"error": exc.to_dict()}
        except Exception as exc:  # noqa: BLE001 - a replica answers, it does not crash on one request
            logger.exception("request for %s failed", serve.get_multiplexed_model_id())
            return {"error": inference_failed(exc).to_dict()}

    async def warm(self) -> dict[str, Any]:
        """Load the request's model now (admin ``warm``); ``{"result": model_id}``."""
        async def go() -> str:
            loaded = await self._pin("")
            await self._unpin(loaded)
            return loaded.model_id
        return await self._guarded(go)

    async def classify(self, inputs: list[str]) -> dict[str, Any]:
        """``{"result": [{"label", "probabilities"}, ...]}`` or ``{"error": ...}``."""
        async def go() -> Any:
            loaded = await self._pin(CLASSIFY_TASK)
            try:
                out = await self.classify_batch((loaded, inputs))
            finally:
                await self._unpin(loaded)
            return infer.rows_of(out)
        return await self._guarded(go)

    @serve.batch(max_batch_size=defaults.MAX_BATCH_SIZE, batch_wait_timeout_s=defaults.BATCH_WAIT_MS / 1000)
    async def classify_batch(self, items: list[tuple[runtime.LoadedModel, list[str]]]) -> list[Any]:
        return await asyncio.to_thread(infer.classify_many, items)

    # ------------------------------------------------------------ generation (the decode engine)

    async def completions(self, prompts: list[str], params: SamplingParams) -> dict[str, Any]:
        """``{"result": Completion}`` (choice ``p * n + i`` of prompt ``p``) or ``{"error": ...}``."""
        return await self._guarded(lambda: infer.collect(
            self._generation(lambda loaded: infer.completion_prompts(loaded, prompts), params)))

    async def chat(self, messages: list[dict[str, str]], params: SamplingParams) -> dict[str, Any]:
        """``{"result": Completion}`` of the assistant's reply, or ``{"error": ...}``."""
        return await self._guarded(lambda: infer.collect(
            self._generation(lambda loaded: [infer.render_chat(loaded, messages)], params)))

    async def stream_completions(self, prompts: list[str], params: SamplingParams) -> AsyncIterator[Piece]:
        """Streamed ``completions``: text :class:`Piece` s as they are decoded, then the usage (or one error)."""
        async for piece in self._stream(lambda loaded: infer.completion_prompts(loaded, prompts), params):
            yield piece

    async def stream_chat(self, messages: list[dict[str, str]], params: SamplingParams) -> AsyncIterator[Piece]:
        """Streamed ``chat`` (see :meth:`stream_completions`)."""
        async for piece in self._stream(lambda loaded: [infer.render_chat(loaded, messages)], params):
            yield piece

    async def _generation(self, prompt_ids: Callable[[runtime.LoadedModel], list[list[int]]],
                          params: SamplingParams) -> AsyncIterator[Piece]:
        """The request's pieces from the model's decode engine; the model stays pinned until the engine is done
        with it (cancelled requests included: a client that leaves cancels its sequences)."""
        loaded = await self._pin(SFT_TASK)
        try:
            prompts = prompt_ids(loaded)
            # the engine's loop: made on first use under the pool's lock, which a decode step holds: never wait
            # for it on the event loop, which streams every other request's tokens
            engine = loaded.generator() if loaded.has_generator() else await asyncio.to_thread(loaded.generator)
        except BaseException:
            await self._unpin(loaded)
            raise
        gen = infer.Generation(loaded, engine, prompts, params, lambda: asyncio.ensure_future(self._unpin(loaded)))
        async for piece in gen.pieces(self.request_timeout_s):
            yield piece

    async def _stream(self, prompt_ids: Callable[[runtime.LoadedModel], list[list[int]]],
                      params: SamplingParams) -> AsyncIterator[Piece]:
        try:
            async for piece in self._generation(prompt_ids, params):
                yield piece
        except ServeError as exc:
            yield Piece(error=exc.to_dict())
        except Exception as exc:  # noqa: BLE001 - the stream ends with an error event, the replica goes on
            logger.exception("streamed request for %s failed", serve.get_multiplexed_model_id())
            yield Piece(error=inference_failed(exc).to_dict())
