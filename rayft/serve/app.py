"""The Ray Serve application behind ``rayft serve``: an HTTP gateway and one model deployment per base model.

``Gateway`` (FastAPI ingress) validates requests, resolves model ids and aliases against the adapter store
(:class:`rayft.serve.catalog.Catalog`: re-read with a short TTL, and at once on a miss, so newly exported,
registered or re-aliased models are served without a restart), refuses results that do not fit the served bases,
serves the admin routes (each behind the bearer-token dependency :func:`require_admin`), and routes each request
with ``multiplexed_model_id`` to the :class:`rayft.serve.replica.ModelServer` deployment of the model's base.
Run it with :func:`rayft.serve.start`, or ``serve run`` / ``serve deploy`` on ``serving/*.yaml`` (which call
:func:`app_builder`). Defaults come from :mod:`rayft.serve.defaults`.
"""

# No ``from __future__ import annotations`` here: Serve's class-based FastAPI views then see string
# annotations and FastAPI takes the request bodies for query parameters.
import hashlib
import logging
import re
from pathlib import Path
from typing import Any, AsyncIterator, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayft.errors import StoreError
from rayft.serve import defaults
from rayft.serve.replica import ModelServer
from rayft.serve.admin import AliasRequest, RegisterRequest, check_bearer, configured_digest
from rayft.serve.api import (CLASSIFY_TASK, SFT_TASK, ChatRequest, ClassifyRequest, CompletionRequest, ModelEntry,
                             Piece, ServeError, StreamShape, chat_response, classification_response, completion_response,
                             internal_error, models_response, not_found, require_task, sse,
                             validation_error)
from rayft.serve.catalog import Catalog
from rayft.serve.defaults import GenerationLimits
from rayft.serve.metrics import open_board
from rayft.store import AdapterStore
from rayft.store.compat import BaseInfo
from rayft.store.records import remove_alias, set_alias, set_registered

logger = logging.getLogger("ray.serve")  # inside replicas, Serve writes it to the replica log files

api = FastAPI(title="rayft", description="OpenAI-compatible serving of rayft adapters", docs_url="/docs")


async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


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


# Helpers the Gateway uses are defined above it: Serve ships the ingress class with the globals it sees then.


def _valid_alias(alias: str) -> str:
    from rayft.store import validate_id

    try:
        return validate_id(alias)
    except StoreError as exc:
        raise ServeError(422, str(exc).replace("adapter id", "alias"), "invalid_request_error",
                         "invalid_alias") from None


async def require_admin(request: Request) -> None:
    """FastAPI dependency of every admin route: the request's bearer token must match this gateway's.

    The gateway is the replica's servable object, where Serve also finds the ``self`` of each route.

    Raises:
        ServeError: 403 if admin routes are disabled or the token is wrong, 401 if none was sent.
    """
    check_bearer(request.headers.get("authorization"), serve.get_replica_context().servable_object.admin_digest)


ADMIN_ONLY = [Depends(require_admin)]  # ``dependencies=`` of the admin routes


async def _events(first: Piece, gen: Any, shape: StreamShape, usage: bool, choices: int) -> AsyncIterator[bytes]:
    """OpenAI stream chunks from the model server's pieces, then ``[DONE]``; leaving early (the client went away)
    cancels the model server's stream, which frees the request's sequences."""
    opening = shape.opening(choices)
    if opening:
        yield sse(opening)

    async def pieces() -> AsyncIterator[Piece]:
        yield first
        async for piece in gen:
            yield piece

    try:
        async for piece in pieces():
            if piece.error is not None:
                yield sse(ServeError(**piece.error).body())
                return
            if piece.usage is not None:
                if usage:
                    yield sse(shape.usage(piece.usage))
            elif piece.text or piece.finish_reason:
                yield sse(shape.text(piece.index, piece.text, piece.finish_reason))
    except Exception as exc:  # noqa: BLE001 - the replica went away mid-stream
        logger.error("stream broke: %r", exc)
        yield sse(internal_error("the model server stopped while streaming; retry").body())
        return
    finally:
        gen.cancel()  # a no-op once the stream ended; else the client left and the replica stops decoding for it
    yield sse("[DONE]")


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(api)
class Gateway:
    """HTTP ingress: validation, model resolution against the store, one model deployment per base, admin routes."""

    def __init__(self, servers: dict, store: str, catalog_ttl: float = defaults.CATALOG_TTL_S,
                 admin_digest: str | None = None, app: str = defaults.APP_NAME) -> None:
        self.servers: dict[str, DeploymentHandle] = servers
        self.store = AdapterStore(store)
        self.catalog = Catalog(self.store, {name: BaseInfo.of(name) for name in servers}, catalog_ttl)
        self.admin_digest = admin_digest
        self.board = open_board(app)  # the model replicas' figures, for /metrics

    def entry(self, model: str, task: str, route: str) -> ModelEntry:
        """The served entry for ``model``, checked against the route's task."""
        entry = self.catalog.resolve(model)
        require_task(entry, task, route)
        return entry

    def handle(self, entry: ModelEntry, method: str, stream: bool = False) -> Any:
        server = self.servers.get(entry.base_model)
        if server is None:
            raise ServeError(409, f"model {entry.id!r} needs base {entry.base_model!r}, which is not served here",
                             "invalid_request_error", "base_not_served")
        return server.options(multiplexed_model_id=entry.key, method_name=method, stream=stream)

    async def call(self, entry: ModelEntry, method: str, *args: Any) -> Any:
        """Call ``ModelServer.<method>`` on the replica multiplexing ``entry``; raise its error, if any."""
        try:
            out = await self.handle(entry, method).remote(*args)
        except ServeError:
            raise
        except Exception as exc:  # noqa: BLE001 - replica died, deployment unavailable, ...
            logger.error("model server call %s(%s) failed: %r", method, entry.id, exc)
            raise ServeError(503, f"the model server could not answer for {entry.id!r}; retry later",
                             "server_error", "unavailable") from None
        if "error" in out:
            raise ServeError(**out["error"])
        return out["result"]

    async def stream(self, entry: ModelEntry, method: str, shape: StreamShape, usage: bool, choices: int,
                     *args: Any) -> StreamingResponse:
        """Server-sent events of a streamed answer; an error before the first piece is a plain JSON error."""
        gen = self.handle(entry, method, stream=True).remote(*args)
        try:
            first = await gen.__anext__()
        except Exception as exc:  # noqa: BLE001
            logger.error("model server stream %s(%s) failed: %r", method, entry.id, exc)
            raise ServeError(503, f"the model server could not answer for {entry.id!r}; retry later",
                             "server_error", "unavailable") from None
        if first.error is not None:
            gen.cancel()
            raise ServeError(**first.error)
        return StreamingResponse(_events(first, gen, shape, usage, choices), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "bases": sorted(self.servers)}

    @api.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus text: tokens, running and queued sequences, latency histograms, adapter loads/evictions."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(await self.board.render.remote(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        self.catalog.refresh(force=True)
        return models_response(self.catalog.entries)

    @api.get("/v1/models/{model_id:path}")
    async def retrieve_model(self, model_id: str) -> dict[str, Any]:
        return self.catalog.resolve(model_id).card()

    @api.post("/v1/classify")
    async def classify(self, body: ClassifyRequest) -> dict[str, Any]:
        entry = self.entry(body.model, CLASSIFY_TASK, "/v1/classify")
        return classification_response(entry.id, await self.call(entry, "classify", body.inputs))

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> Any:
        entry = self.entry(body.model, SFT_TASK, "/v1/completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        params = body.params(body.max_tokens)
        if body.stream:
            return await self.stream(entry, "stream_completions", StreamShape(entry.id, chat=False),
                                     body.include_usage(), len(prompts) * params.n, prompts, params)
        return completion_response(entry.id, await self.call(entry, "completions", prompts, params))

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatRequest) -> Any:
        entry = self.entry(body.model, SFT_TASK, "/v1/chat/completions")
        params = body.params(body.limit())
        if body.stream:
            return await self.stream(entry, "stream_chat", StreamShape(entry.id, chat=True), body.include_usage(),
                                     params.n, body.plain_messages(), params)
        return chat_response(entry.id, await self.call(entry, "chat", body.plain_messages(), params))

    # ------------------------------------------------------------ admin (bearer token)

    @api.get("/admin/models", dependencies=ADMIN_ONLY)
    async def admin_models(self) -> dict[str, Any]:
        cat = self.catalog
        cat.refresh(force=True)
        return {"object": "list", "data": [e.card() for e in cat.entries.values()], "aliases": cat.aliases,
                "unregistered": sorted(cat.withdrawn), "refused": {k: e.message for k, e in cat.refused.items()}}

    @api.post("/admin/adapters", dependencies=ADMIN_ONLY)
    async def register(self, body: RegisterRequest) -> dict[str, Any]:
        self.catalog.check(body.model)  # 404 / 409 / 422 before anything changes
        set_registered(self.store, body.model, True)
        entry = self.catalog.resolve(body.model)
        if body.warm:
            await self.call(entry, "warm")
        return {**entry.card(), "registered": True, "warm": body.warm}

    @api.delete("/admin/adapters/{model_id:path}", dependencies=ADMIN_ONLY)
    async def unregister(self, model_id: str) -> dict[str, Any]:
        if not self.store.exists(model_id):
            raise not_found(model_id)
        self.catalog.refresh(force=True)
        users = sorted(a for a, t in self.catalog.aliases.items() if t == model_id)
        if users:
            raise ServeError(409, f"model {model_id!r} is the target of alias {', '.join(users)}; point the alias "
                                  "elsewhere first", "invalid_request_error", "alias_in_use")
        set_registered(self.store, model_id, False)
        self.catalog.refresh(force=True)
        return {"id": model_id, "object": "model", "registered": False}

    @api.get("/admin/aliases", dependencies=ADMIN_ONLY)
    async def list_aliases(self) -> dict[str, Any]:
        self.catalog.refresh(force=True)
        return {"object": "list", "data": [{"alias": a, "model": t} for a, t in self.catalog.aliases.items()]}

    @api.put("/admin/aliases/{alias:path}", dependencies=ADMIN_ONLY)
    async def put_alias(self, alias: str, body: AliasRequest) -> dict[str, Any]:
        _valid_alias(alias)
        target = self.catalog.resolve(body.model)
        if target.alias_of:
            raise ServeError(422, f"{body.model!r} is itself an alias (of {target.alias_of!r}); name a model",
                             "invalid_request_error", "alias_of_alias")
        try:
            record = set_alias(self.store, alias, target.id)
        except StoreError as exc:
            raise ServeError(409, str(exc), "invalid_request_error", "alias_conflict") from None
        self.catalog.refresh(force=True)
        logger.info("alias %s -> %s (was %s)", alias, target.id, record["previous"])
        return {"alias": alias, "model": target.id, "previous": record["previous"], "updated": record["updated"]}

    @api.delete("/admin/aliases/{alias:path}", dependencies=ADMIN_ONLY)
    async def delete_alias(self, alias: str) -> dict[str, Any]:
        if not remove_alias(self.store, _valid_alias(alias)):
            raise ServeError(404, f"alias {alias!r} not found", "invalid_request_error", "alias_not_found")
        self.catalog.refresh(force=True)
        return {"alias": alias, "deleted": True}


class BaseArgs(BaseModel):
    """Per-base-model deployment settings (``bases:`` in a Serve config); unset fields take the app's defaults."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | Literal["auto"] | None = None
    autoscaling_config: dict[str, Any] | None = None
    max_adapters: int | None = Field(None, ge=1, le=1024)
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)
    max_running: int | None = Field(None, ge=1, le=1024)
    max_queued: int | None = Field(None, ge=1, le=100_000)


class AppArgs(BaseModel):
    """Arguments of :func:`app_builder` (the ``args:`` of a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field(min_length=1)
    bases: dict[str, BaseArgs] | list[str] | None = None
    max_adapters: int = Field(defaults.MAX_ADAPTERS, ge=1, le=1024)
    num_replicas: int | Literal["auto"] = defaults.NUM_REPLICAS
    autoscaling_config: dict[str, Any] | None = None
    name: str = Field(defaults.APP_NAME, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    num_cpus: float = Field(defaults.NUM_CPUS, gt=0)
    num_gpus: float = Field(0, ge=0)
    catalog_ttl: float = Field(defaults.CATALOG_TTL_S, ge=0)
    max_batch_size: int = Field(defaults.MAX_BATCH_SIZE, ge=1, le=256)
    batch_wait_ms: float = Field(defaults.BATCH_WAIT_MS, ge=0, le=1000)
    admin_token: str | None = Field(None, min_length=16)
    max_running: int = Field(GenerationLimits.max_running, ge=1, le=1024)
    max_queued: int = Field(GenerationLimits.max_queued, ge=1, le=100_000)
    step_tokens: int = Field(GenerationLimits.step_tokens, ge=2, le=65_536)
    max_n: int = Field(GenerationLimits.max_n, ge=1, le=1024)
    request_timeout_s: float = Field(GenerationLimits.request_timeout_s, gt=0)


def deployment_name(app: str, base: str) -> str:
    """``<app>-models-<base folder name>-<hash>``: a readable, unique Serve deployment name per base model."""
    tail = re.sub(r"[^A-Za-z0-9]+", "-", Path(base).name or base).strip("-")[-40:] or "base"
    return f"{app}-models-{tail}-{hashlib.sha1(base.encode()).hexdigest()[:6]}"


def _bases(root: Path, bases: dict[str, BaseArgs] | list[str] | None) -> dict[str, BaseArgs]:
    if bases:
        return dict(bases) if isinstance(bases, dict) else {b: BaseArgs() for b in bases}
    found = sorted({m.base_model for m in AdapterStore(root).list()})
    if not found:
        raise StoreError(f"adapter store {root} holds no models yet: export one first, or name the base models "
                         "to serve (bases)")
    return {b: BaseArgs() for b in found}


def build_app(store: str, *, bases: dict[str, Any] | list[str] | None = None,
              max_adapters: int = defaults.MAX_ADAPTERS, num_replicas: int | str = defaults.NUM_REPLICAS,
              autoscaling_config: dict[str, Any] | None = None, name: str = defaults.APP_NAME,
              num_cpus: float = defaults.NUM_CPUS, catalog_ttl: float = defaults.CATALOG_TTL_S,
              max_batch_size: int = defaults.MAX_BATCH_SIZE, batch_wait_ms: float = defaults.BATCH_WAIT_MS,
              admin_token: str | None = None, max_running: int = GenerationLimits.max_running,
              max_queued: int = GenerationLimits.max_queued, step_tokens: int = GenerationLimits.step_tokens,
              max_n: int = GenerationLimits.max_n, request_timeout_s: float = GenerationLimits.request_timeout_s,
              num_gpus: float = 0) -> serve.Application:
    """The bound Serve application: ``<name>-gateway`` (ingress) in front of one model deployment per base.

    Args:
        store: the adapter store directory (resolved to an absolute path here).
        bases: base models to serve (names as manifests spell them), optionally with per-base settings
            (``num_replicas``, ``autoscaling_config``, ``max_adapters``, ``num_cpus``); default: every base
            model of the store's results.
        max_adapters: models each replica keeps loaded (LRU beyond that).
        num_replicas: replicas per base model (``"auto"`` with ``autoscaling_config``).
        autoscaling_config: Ray Serve autoscaling settings for every base (``min_replicas``, ...).
        name: prefix of the deployment names.
        num_cpus: CPUs each model replica reserves (torch uses that many threads).
        catalog_ttl: seconds the gateway caches the store listing.
        max_batch_size: classification requests gathered into one forward pass.
        batch_wait_ms: how long a replica waits to fill a batch.
        admin_token: bearer token of the admin routes (default ``$RAYFT_ADMIN_TOKEN``; none: admin disabled).
        max_running: sequences each replica's decode engine runs at once (per base; requests beyond wait).
        max_queued: requests that may wait per engine; beyond them a request is refused with 429.
        step_tokens: tokens one decode step spends (one per running sequence, the rest on prompt chunks).
        max_n: choices per prompt (``n``) a request may ask for.
        request_timeout_s: a generation request not finished by then ends with 504.
        num_gpus: GPUs each model replica reserves; with one, models run there in bfloat16 with SDPA attention.

    Autoscaling keys off queue depth: Serve counts a request as ongoing from its arrival at the replica until its
    answer ends, so running and queued generation requests both count; ``target_ongoing_requests`` defaults to
    ``max_running`` (a replica full of running sequences, nothing waiting).

    Raises:
        StoreError: if ``store`` is not a directory, or holds nothing and no bases are named.
        RequestError: for limits that do not fit together (``step_tokens`` <= ``max_running``, ...).
    """
    root = Path(store).expanduser().resolve()
    if not root.is_dir():
        raise StoreError(f"adapter store {root} does not exist (export an adapter first, or create the folder)")
    servers = {}
    for base, own in _bases(root, {k: BaseArgs.model_validate(v) for k, v in bases.items()}
                            if isinstance(bases, dict) else bases).items():
        limits = GenerationLimits(max_running=own.max_running or max_running, max_queued=own.max_queued or max_queued,
                                  step_tokens=step_tokens, max_n=max_n, request_timeout_s=request_timeout_s)
        # Serve must let every request the engine may hold reach the replica, or it queues them itself and no 429
        # is ever answered; the rest is for classification batches and admin calls.
        ongoing = max(64, 4 * max_batch_size, limits.max_running + limits.max_queued + 16)
        resources = {"num_cpus": own.num_cpus or num_cpus, "num_gpus": own.num_gpus or num_gpus}
        options: dict[str, Any] = {"name": deployment_name(name, base),
                                   "ray_actor_options": {k: v for k, v in resources.items() if v},
                                   "max_ongoing_requests": ongoing}
        scaling = own.autoscaling_config or (None if own.num_replicas else autoscaling_config)
        if scaling:  # replicas between min_replicas and max_replicas, on ongoing (running + queued) requests
            options["autoscaling_config"] = {"target_ongoing_requests": limits.max_running, **scaling}
        else:
            options["num_replicas"] = own.num_replicas or num_replicas
        servers[base] = ModelServer.options(**options).bind(str(root), own.max_adapters or max_adapters,
                                                            max_batch_size, batch_wait_ms / 1000, limits, name)
    gateway = Gateway.options(name=f"{name}-gateway")
    return gateway.bind(servers, str(root), catalog_ttl, configured_digest(admin_token), name)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point for ``serve run`` / ``serve deploy`` config files (``import_path: rayft.serve.app:app_builder``).

    Raises:
        ValueError: for unknown or invalid arguments.
    """
    try:
        parsed = AppArgs.model_validate(dict(args or {}))
    except ValidationError as exc:
        raise ValueError(f"invalid rayft serve arguments: {validation_error(exc.errors()).message}") from None
    return build_app(**{k: v for k, v in parsed.model_dump().items()})
