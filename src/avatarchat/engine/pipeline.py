"""The loaded pipeline: handlers built from a config, models loaded once, sessions opened on it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from avatarchat.engine.clock import REAL_CLOCK, Clock
from avatarchat.engine.config import PipelineConfig
from avatarchat.engine.handler import STAGES, Handler, HandlerLoadError, SessionInfo, VoiceHandler, handlers_for
from avatarchat.engine.session import Session

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class Pipeline:
    """Shared handlers for every session. Build with ``await Pipeline.load(config)``."""

    def __init__(self, config: PipelineConfig, handlers: list[Handler[Any]]) -> None:
        self.config = config
        self.handlers = handlers

    @classmethod
    def build(cls, config: PipelineConfig) -> Pipeline:
        """Instantiate the handlers named in ``config`` without loading their models."""
        handlers = []
        for stage in STAGES:
            if stage not in config.stages:
                continue  # an optional stage left out
            sc = config.stages[stage]
            handler = handlers_for(stage)[sc.handler](sc.options)
            handler.use_session(config.session)
            handlers.append(handler)
        return cls(config, handlers)

    @classmethod
    async def load(cls, config: PipelineConfig, progress: Progress | None = None) -> Pipeline:
        """Build and load every handler (in an executor), reporting each with its load time.

        Raises ``HandlerLoadError`` naming the stage and handler if any load fails.
        """
        pipeline = cls.build(config)
        say = progress or log.info
        total = time.perf_counter()
        loop = asyncio.get_running_loop()
        for handler in pipeline.handlers:
            say(f"loading {handler.stage:<4} {handler.name} …")
            t0 = time.perf_counter()
            try:
                await loop.run_in_executor(None, handler.load)
            except Exception as exc:
                raise HandlerLoadError(f"{handler.stage} handler {handler.name!r} failed to load: {exc}") from exc
            say(f"loaded  {handler.stage:<4} {handler.name} in {time.perf_counter() - t0:.2f} s")
        say(f"pipeline ready in {time.perf_counter() - total:.2f} s")
        return pipeline

    def session(self, session_id: str | None = None, clock: Clock = REAL_CLOCK,
                avatar_output: Literal["frames", "params"] = "frames") -> Session:
        """A new, not yet started session (``async with pipeline.session() as s``) on
        ``clock``; its avatar sends ``avatar_output`` (see ``SessionInfo``)."""
        info = SessionInfo(session_id or uuid.uuid4().hex[:12], self.config.session, clock=clock,
                           avatar_output=avatar_output)
        return Session(self.handlers, info)

    @property
    def reply_sample_rate(self) -> int | None:
        """The rate of the reply audio, as the voice handler declares it (``VoiceHandler``:
        the TTS, or the speech-to-speech model)."""
        voice = next((h for h in self.handlers if isinstance(h, VoiceHandler)), None)
        return voice.sample_rate if voice is not None else None

    def handler(self, stage: str) -> Handler[Any]:
        return next(h for h in self.handlers if h.stage == stage)
