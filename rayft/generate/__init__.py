"""Generation: a continuous-batching decode engine over one model and its adapters (free of Ray)."""

from rayft.generate.engine import DecodeEngine, EngineConfig, EngineFull
from rayft.generate.loop import EngineLoop, asyncio_sink
from rayft.generate.outputs import Choice, Event, Handle, Request, Result, Usage
from rayft.generate.params import RequestError, SamplingParams, check_request

__all__ = ["Choice", "DecodeEngine", "EngineConfig", "EngineFull", "EngineLoop", "Event", "Handle", "Request",
           "RequestError", "Result", "SamplingParams", "Usage", "asyncio_sink", "check_request"]
