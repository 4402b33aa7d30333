"""``ModelServer``: the Serve deployment that runs one base model's adapters (one deployment per base model).

Each replica loads the base once and hot-swaps adapters with ``@serve.multiplexed`` (LRU of ``max_adapters``
resident models). Classification requests are gathered by ``@serve.batch``: requests for different LoRA
adapters on the base share one forward pass (peft mixed-adapter batches). Completions stream token by token.
Models come from :mod:`rayft.serve.runtime`, answers from :mod:`rayft.serve.infer`; this class adds Serve's
multiplexing, batching, pinning against eviction and the threads that keep the event loop free.
"""

# No ``from __future__ import annotations``: Serve inspects these methods.
import asyncio
import logging
import os
from typing import Any, AsyncIterator, Callable

from ray import serve

from rayft.serve import defaults, infer, runtime
from rayft.serve.api import CLASSIFY_TASK, SFT_TASK, ServeError, evicted, inference_failed
from rayft.store import AdapterStore

logger = logging.getLogger("ray.serve")
PIN_TRIES = 5


@serve.deployment(ray_actor_options={"num_cpus": defaults.NUM_CPUS}, max_ongoing_requests=64)
class ModelServer:
    """Per replica: bases loaded once per ``base_key``, adapters multiplexed on them (LRU, ``max_adapters``)."""

    def __init__(self, store: str, max_adapters: int = defaults.MAX_ADAPTERS,
                 max_batch_size: int = defaults.MAX_BATCH_SIZE,
                 batch_wait_s: float = defaults.BATCH_WAIT_MS / 1000) -> None:
        from rayft.paths import quiet_libraries, setup_env

        setup_env()
        quiet_libraries()
        import torch

        torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1")))))
        self.pool = runtime.ModelPool(AdapterStore(store), spare_slots=max_adapters)

        async def _load_model(key: str) -> runtime.LoadedModel:
            return await asyncio.to_thread(self.pool.load, key)

        # Wired per instance so the LRU size is an argument (Serve detects instance-level multiplexing).
        self.get_model = serve.multiplexed(max_num_models_per_replica=max_adapters)(_load_model)
        self.classify_batch.set_max_batch_size(max_batch_size)
        self.classify_batch.set_batch_wait_timeout_s(batch_wait_s)

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

    async def _generate(self, fn: Callable[[runtime.LoadedModel, Any], Any]) -> Any:
        loaded = await self._pin(SFT_TASK)
        try:
            return await asyncio.to_thread(loaded.run, fn)
        finally:
            await self._unpin(loaded)

    async def completions(self, prompts: list[str], params: dict[str, Any]) -> dict[str, Any]:
        """``{"result": [{"text", "finish_reason", "prompt_tokens", "completion_tokens"}, ...]}``."""
        return await self._guarded(lambda: self._generate(lambda lm, m: infer.complete_text(lm, m, prompts, params)))

    async def chat(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        """``{"result": {"text", "finish_reason", "prompt_tokens", "completion_tokens"}}``."""
        return await self._guarded(lambda: self._generate(lambda lm, m: infer.complete_chat(lm, m, messages, params)))

    async def stream_completions(self, prompts: list[str], params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Streamed ``completions``: ``{"index", "text"}`` pieces, ``{"index", "done": out}``, or ``{"error"}``."""
        async for item in self._stream(lambda loaded: infer.completion_prompts(loaded, prompts), params):
            yield item

    async def stream_chat(self, messages: list[dict[str, str]], params: dict[str, Any]) -> AsyncIterator[dict]:
        """Streamed ``chat`` (see :meth:`stream_completions`)."""
        async for item in self._stream(lambda loaded: [infer.render_chat(loaded, messages)], params):
            yield item

    async def _stream(self, prompt_ids: Callable[[runtime.LoadedModel], list[list[int]]],
                      params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            loaded = await self._pin(SFT_TASK)
        except ServeError as exc:
            yield {"error": exc.to_dict()}
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                for index, ids in enumerate(prompt_ids(loaded)):
                    def one(lm: runtime.LoadedModel, model: Any) -> dict[str, Any]:
                        return infer.stream_complete(lm, model, ids, params,
                                                     lambda text: put({"index": index, "text": text}))
                    put({"index": index, "done": loaded.run(one)})
            except ServeError as exc:
                put({"error": exc.to_dict()})
            except Exception as exc:  # noqa: BLE001
                logger.exception("streamed request for %s failed", loaded.model_id)
                put({"error": inference_failed(exc).to_dict()})
            finally:
                put(None)

        worker = loop.run_in_executor(None, work)
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            await worker
            await self._unpin(loaded)
