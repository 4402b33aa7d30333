"""Serving: stored adapters behind Ray Serve with an OpenAI-compatible HTTP API.

``start(store)`` runs the app on a local (or given) Ray cluster and returns its URL; ``Client`` talks to it.
The Serve application itself lives in :mod:`rayft.serve.app` (imported lazily: it needs ``ray[serve]``).
"""

from __future__ import annotations

import time
from typing import Any

from rayft.errors import MissingExtraError, RayftError
from rayft.serve import defaults
from rayft.serve.client import Client, ServeClientError

__all__ = ["Client", "ServeClientError", "build_app", "shutdown", "start"]


def _serve() -> Any:
    try:
        from ray import serve
        import fastapi  # noqa: F401
    except ImportError:
        raise MissingExtraError("ray[serve]", "serve") from None
    return serve


def build_app(store: str, **kwargs: Any) -> Any:
    """The bound Serve application (see :func:`rayft.serve.app.build_app`)."""
    _serve()
    from rayft.serve.app import build_app as _build

    return _build(store, **kwargs)


def start(store: str, *, host: str = defaults.HOST, port: int = defaults.PORT, address: str | None = None,
          name: str = defaults.APP_NAME, timeout: float = defaults.START_TIMEOUT_S, **app_args: Any) -> str:
    """Serve the adapters in ``store`` over HTTP and return the base URL once ``/healthz`` answers.

    Starts a local Ray (or connects to ``address``) if Ray is not initialized yet. HTTP options are
    cluster-wide in Serve: if Serve already runs on this cluster, its existing host and port stay.

    Args:
        store: the adapter store directory.
        host: interface the HTTP proxy binds (``0.0.0.0`` to listen on all).
        port: HTTP port.
        address: Ray cluster address (``auto``, ``HOST:PORT``); None starts a local Ray.
        name: the Serve application name (and prefix of its deployment names).
        timeout: seconds to wait for the app to answer.
        **app_args: further :func:`rayft.serve.app.build_app` arguments, with its defaults (``max_adapters``,
            ``num_replicas``, ``num_cpus``, ``bases``, ``admin_token``, ``autoscaling_config``,
            ``max_batch_size``, ``batch_wait_ms``, ``catalog_ttl``, and generation's ``max_running``,
            ``max_queued``, ``step_tokens``, ``max_n``, ``request_timeout_s``, ``num_gpus``).

    Raises:
        StoreError: if ``store`` is not a directory.
        MissingExtraError: if ``ray[serve]`` is not installed.
        RayftError: if the app does not answer within ``timeout``.
    """
    serve = _serve()
    import ray

    from rayft.cluster import init_ray
    from rayft.serve.app import build_app as _build

    app = _build(store, name=name, **app_args)
    if not ray.is_initialized():
        init_ray(address, quiet=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=name, route_prefix="/")
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    wait_until_healthy(url, timeout)
    return url


def wait_until_healthy(url: str, timeout: float = defaults.START_TIMEOUT_S) -> None:
    """Poll ``url/healthz`` until it answers.

    Raises:
        RayftError: if it does not answer within ``timeout`` seconds.
    """
    client = Client(url, timeout=5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.health()
            return
        except ServeClientError as exc:
            if time.monotonic() > deadline:
                raise RayftError(f"rayft serve did not answer at {url}/healthz within {timeout:.0f}s: {exc}") from None
        time.sleep(0.25)


def shutdown() -> None:
    """Shut Serve down on the connected cluster (Ray itself keeps running)."""
    import ray

    if ray.is_initialized():
        _serve().shutdown()
