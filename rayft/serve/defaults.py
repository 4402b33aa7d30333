"""The defaults of ``rayft serve``, written once.

The CLI (``rayft serve`` / ``eval`` / ``promote`` / ``query``), :func:`rayft.serve.start`,
:func:`rayft.serve.app.build_app`, the Serve config arguments (:class:`rayft.serve.app.AppArgs`), the model
deployment, :class:`rayft.serve.Client` and :mod:`rayft.serve.evaluate` all take their defaults from here.
Free of Ray (the CLI imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

from rayft.generate.params import EngineConfig

APP_NAME = "rayft"  # Serve application name and prefix of the deployment names
HOST = "127.0.0.1"  # interface the HTTP proxy binds
PORT = 8000  # HTTP port
URL = f"http://{HOST}:{PORT}"  # where a server started with the defaults answers
MAX_ADAPTERS = 8  # models each model replica keeps loaded (LRU beyond that)
NUM_REPLICAS = 1  # replicas per base model
NUM_CPUS = 1.0  # CPUs each model replica reserves (torch uses that many threads)
MAX_BATCH_SIZE = 16  # classification requests gathered into one forward pass
BATCH_WAIT_MS = 5.0  # how long a replica waits to fill a batch
CATALOG_TTL_S = 2.0  # seconds the gateway caches the store listing
START_TIMEOUT_S = 120.0  # seconds :func:`rayft.serve.start` waits for ``/healthz``
COMPLETION_MAX_TOKENS = 32  # completion length of ``rayft query`` and :meth:`rayft.serve.Client.complete`
CHAT_MAX_TOKENS = 64  # reply length of :meth:`rayft.serve.Client.chat`, and of sft models scored by ``rayft eval``
EVAL_BATCH_SIZE = 32  # texts per ``/v1/classify`` request when ``rayft eval`` scores a model
EVAL_CONCURRENCY = 16  # chat requests ``rayft eval`` keeps in flight per sft model (the decode engine batches them)


@dataclass(frozen=True)
class GenerationLimits(EngineConfig):
    """What one model replica takes on for generation, per decode engine (one per served base model): the engine's
    limits (running sequences, queued requests, tokens per step, choices per prompt) plus ``request_timeout_s``,
    after which a request that has not finished ends with 504."""

    request_timeout_s: float = 300.0
