"""A local OpenAI-compatible LLM server for tests: xllamacpp's own HTTP server on SmolLM2.

Shared by ``tests/test_llm.py`` and the conformance suite. The server listens on a free
port of 127.0.0.1 only and is gone (port closed) when the context manager exits.
"""

from __future__ import annotations

import gc
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from avatarchat.bench.harness import free_port
from avatarchat.handlers.llm.local import SMOLLM2_135M

__all__ = ["free_port", "port_open", "serve_llm"]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def serve_llm(n_ctx: int = 1024, parallel: int = 1, startup_timeout: float = 30.0,
              port: int | None = None) -> Iterator[str]:
    """Start the server for the SmolLM2 GGUF; yields its base URL (``http://127.0.0.1:PORT``,
    append ``/v1`` for the OpenAI API) once ``/health`` answers 200. ``port``: listen there
    (a test that stops the server and starts it again at the same address), else a free one."""
    import xllamacpp

    port = port or free_port()
    params = xllamacpp.CommonParams()
    params.model.path = str(SMOLLM2_135M.locate())
    params.n_ctx = n_ctx
    params.n_parallel = parallel
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.verbosity = 0
    params.hostnames = ["127.0.0.1"]
    params.port = port
    server: Any = xllamacpp.Server(params)
    url = server.listening_address
    assert url == f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        yield url
    finally:
        del server  # the Server's destructor stops the HTTP listener
        gc.collect()
        assert not port_open(port), "the test LLM server still listens after teardown"
