"""Errors that reach a client say what went wrong, never how: a short message and an id.

The details (exception, traceback, URLs, paths) go to the server log under the same id, so
an operator can find them from what the user reports, and nothing internal (a server URL in
an LLM error, a file path, a library's exception text) leaves the server.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any


def new_error_id() -> str:
    """A short random id that ties a client's error message to its log record."""
    return uuid.uuid4().hex[:8]


def log_error(logger: logging.Logger | logging.LoggerAdapter[Any], message: str, *args: object,
              exc_info: bool = True, level: int = logging.ERROR) -> str:
    """Log ``message`` (with the current exception's traceback by default) under a new
    error id, and return the id for the client's message."""
    error_id = new_error_id()
    logger.log(level, f"[error {error_id}] {message}", *args, exc_info=exc_info)
    return error_id


def client_message(what: str, error_id: str) -> str:
    """The text a client gets: ``what`` happened, and the id to quote."""
    return f"{what} (error id {error_id})"
