"""The Ray Serve application behind ``rayft serve``: an HTTP gateway and a multiplexed model deployment.

``Gateway`` (FastAPI ingress) validates requests, resolves the model id against the adapter store (re-read
with a short TTL, and at once on a miss, so newly exported adapters appear without a restart) and routes to
``ModelServer`` with ``multiplexed_model_id``. ``ModelServer`` replicas load adapters on demand with
``@serve.multiplexed`` and evict them LRU. Run it with :func:`rayft.serve.start`, or ``serve run`` on
``serving/app.yaml`` (which calls :func:`app_builder`).
"""

# No ``from __future__ import annotations`` here: Serve's class-based FastAPI views then see string
# annotations and FastAPI takes the request bodies for query parameters.
import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayft.errors import StoreError
from rayft.serve import runtime
from rayft.serve.api import (CLASSIFY_TASK, SFT_TASK, ChatRequest, ClassifyRequest, CompletionRequest, ModelEntry,
                             ServeError, build_catalog, chat_response, classification_response, completion_response,
                             internal_error, models_response, require_task, resolve, validation_error)
from rayft.store import AdapterStore

logger = logging.getLogger("ray.serve")  # inside replicas, Serve writes it to the replica log files
CATALOG_TTL_S = 2.0

api = FastAPI(title="rayft", description="OpenAI-compatible serving of rayft adapters", docs_url="/docs")


async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    hint = None
    if request.method == "POST" and "json" not in request.headers.get("content-type", ""):
        hint = "send the body as a JSON object with the header 'Content-Type: application/json'"
    return await _serve_error(request, validation_error(exc.errors(), hint))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return JSONResponse(ServeError(exc.status_code, str(exc.detail), kind, code).body(), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s: %r", request.url.path, exc)
    return await _serve_error(request, internal_error())


api.add_exception_handler(ServeError, _serve_error)
api.add_exception_handler(RequestValidationError, _validation_error)
api.add_exception_handler(StarletteHTTPException, _http_error)
api.add_exception_handler(Exception, _unexpected)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
class ModelServer:
    """Per replica: bases loaded once per ``base_key``, adapters multiplexed on them (LRU, ``max_adapters``)."""

    def __init__(self, store: str, max_adapters: int = 8) -> None:
        from rayft.paths import quiet_libraries, setup_env

        setup_env()
        quiet_libraries()
        import torch

        torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1")))))
        self.pool = runtime.ModelPool(AdapterStore(store))

        async def _load_model(key: str) -> runtime.LoadedModel:
            return await asyncio.to_thread(self.pool.load, key)

        # Wired per instance so the LRU size is an argument (Serve detects instance-level multiplexing).
        self.get_model = serve.multiplexed(max_num_models_per_replica=max_adapters)(_load_model)

    async def classify(self, inputs: list[str]) -> dict[str, Any]:
        """``{"result": [{"label", "probabilities"}, ...]}`` or ``{"error": ...}``."""
        return await self._run(CLASSIFY_TASK, lambda lm, m: runtime.classify(lm, m, inputs))

    async def completions(self, prompts: list[str], params: dict[str, Any]) -> dict[str, Any]:
        """``{"result": [{"text", "finish_reason", "prompt_tokens", "completion_tokens"}, ...]}``."""
        return await self._run(SFT_TASK, lambda lm, m: runtime.complete_text(lm, m, prompts, params))

    async def chat(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        """``{"result": {"text", "finish_reason", "prompt_tokens", "completion_tokens"}}``."""
        return await self._run(SFT_TASK, lambda lm, m: runtime.complete_chat(lm, m, messages, params))

    async def _run(self, task: str, fn: Callable[[runtime.LoadedModel, Any], Any]) -> dict[str, Any]:
        key = serve.get_multiplexed_model_id()
        try:
            if not key:
                raise ServeError(400, "no model given", "invalid_request_error", "model_required")
            for _ in range(3):  # an adapter can be evicted between loading and getting the lock: load again
                loaded = await self.get_model(key)
                if loaded.task != task:
                    raise ServeError(400, f"model {loaded.model_id!r} is a {loaded.task!r} model, not {task!r}",
                                     "invalid_request_error", "wrong_task")
                out = await asyncio.to_thread(loaded.run, fn)
                if out is not runtime.EVICTED:
                    return {"result": out}
            raise ServeError(503, "the model was evicted while waiting; retry or raise max_adapters",
                             "server_error", "overloaded")
        except ServeError as exc:
            return {"error": exc.to_dict()}
        except Exception as exc:  # noqa: BLE001 - a replica answers, it does not crash on one request
            logger.exception("request for %s failed", key)
            return {"error": internal_error(f"inference failed: {runtime.short_error(exc)}").to_dict()}


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
@serve.ingress(api)
class Gateway:
    """HTTP ingress: validation, model resolution against the store, errors as JSON."""

    def __init__(self, server: DeploymentHandle, store: str, catalog_ttl: float = CATALOG_TTL_S) -> None:
        self.server, self.store, self.ttl = server, AdapterStore(store), catalog_ttl
        self._catalog: dict[str, ModelEntry] = {}
        self._read_at = float("-inf")

    def catalog(self, force: bool = False) -> dict[str, ModelEntry]:
        """Servable models, re-read from the store when older than the TTL (or when forced)."""
        if force or time.monotonic() - self._read_at > self.ttl:
            self._catalog, self._read_at = build_catalog(self.store.list()), time.monotonic()
        return self._catalog

    def entry(self, model: str, task: str, route: str) -> ModelEntry:
        """The entry for ``model``, checked against the route's task (re-reads the store on a miss)."""
        try:
            entry = resolve(self.catalog(), model)
        except ServeError:
            entry = resolve(self.catalog(force=True), model)
        require_task(entry, task, route)
        return entry

    async def call(self, entry: ModelEntry, method: str, *args: Any) -> Any:
        """Call ``ModelServer.<method>`` on the replica multiplexing ``entry``; raise its error, if any."""
        handle = self.server.options(multiplexed_model_id=entry.key, method_name=method)
        try:
            out = await handle.remote(*args)
        except Exception as exc:  # noqa: BLE001 - replica died, deployment unavailable, ...
            logger.error("model server call %s(%s) failed: %r", method, entry.id, exc)
            raise ServeError(503, f"the model server could not answer for {entry.id!r}; retry later",
                             "server_error", "unavailable") from None
        if "error" in out:
            raise ServeError(**out["error"])
        return out["result"]

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return models_response(self.catalog(force=True))

    @api.get("/v1/models/{model_id:path}")
    async def retrieve_model(self, model_id: str) -> dict[str, Any]:
        return resolve(self.catalog(force=True), model_id).card()

    @api.post("/v1/classify")
    async def classify(self, body: ClassifyRequest) -> dict[str, Any]:
        entry = self.entry(body.model, CLASSIFY_TASK, "/v1/classify")
        return classification_response(entry.id, await self.call(entry, "classify", body.inputs))

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> dict[str, Any]:
        entry = self.entry(body.model, SFT_TASK, "/v1/completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        outs = await self.call(entry, "completions", prompts, body.params(body.max_tokens))
        return completion_response(entry.id, outs)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatRequest) -> dict[str, Any]:
        entry = self.entry(body.model, SFT_TASK, "/v1/chat/completions")
        out = await self.call(entry, "chat", body.plain_messages(), body.params(body.limit()))
        return chat_response(entry.id, out)


class AppArgs(BaseModel):
    """Arguments of :func:`app_builder` (the ``args:`` of a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field(min_length=1)
    max_adapters: int = Field(8, ge=1, le=1024)
    num_replicas: int = Field(1, ge=1, le=1024)
    name: str = Field("rayft", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    num_cpus: float = Field(1.0, gt=0)
    catalog_ttl: float = Field(CATALOG_TTL_S, ge=0)


def build_app(store: str, *, max_adapters: int = 8, num_replicas: int = 1, name: str = "rayft",
              num_cpus: float = 1.0, catalog_ttl: float = CATALOG_TTL_S) -> serve.Application:
    """The bound Serve application: ``<name>-gateway`` (ingress) in front of ``<name>-models``.

    Args:
        store: the adapter store directory (resolved to an absolute path here).
        max_adapters: adapters each model replica keeps loaded (LRU beyond that).
        num_replicas: model replicas.
        name: prefix of the deployment names.
        num_cpus: CPUs each model replica reserves (torch uses that many threads).
        catalog_ttl: seconds the gateway caches the store listing.

    Raises:
        StoreError: if ``store`` is not a directory.
    """
    root = Path(store).expanduser().resolve()
    if not root.is_dir():
        raise StoreError(f"adapter store {root} does not exist (export an adapter first, or create the folder)")
    server = ModelServer.options(name=f"{name}-models", num_replicas=num_replicas,
                                 ray_actor_options={"num_cpus": num_cpus})
    gateway = Gateway.options(name=f"{name}-gateway")
    return gateway.bind(server.bind(str(root), max_adapters), str(root), catalog_ttl)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point for ``serve run`` / ``serve deploy`` config files (``import_path: rayft.serve.app:app_builder``).

    Raises:
        ValueError: for unknown or invalid arguments.
    """
    try:
        parsed = AppArgs.model_validate(dict(args or {}))
    except ValidationError as exc:
        raise ValueError(f"invalid rayft serve arguments: {validation_error(exc.errors()).message}") from None
    return build_app(**parsed.model_dump())
