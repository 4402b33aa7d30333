"""Generation: a continuous-batching decode engine over one model and its adapters (free of Ray).

Names resolve on first use, so ``rayft.generate.params`` (what a gateway validates requests with) imports no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "DecodeEngine": "rayft.generate.engine", "EngineConfig": "rayft.generate.engine",
    "EngineFull": "rayft.generate.engine", "EngineLoop": "rayft.generate.loop", "asyncio_sink": "rayft.generate.loop",
    "Choice": "rayft.generate.outputs", "Event": "rayft.generate.outputs", "Handle": "rayft.generate.outputs",
    "Request": "rayft.generate.outputs", "Result": "rayft.generate.outputs", "Usage": "rayft.generate.outputs",
    "RequestError": "rayft.generate.params", "SamplingParams": "rayft.generate.params",
    "check_request": "rayft.generate.params", "GenerationMetrics": "rayft.generate.metrics",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rayft.generate' has no attribute {name!r}")
