"""The page with access tokens on, in real headless Chromium against a real `avatarchat serve`.

Opened as ``/?token=…`` it gets a session, sending the token only as the Bearer header of its
API requests; opened without one it says it needs an access link. (The server side of tokens
is in test_auth.py; this is the page's half.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from avatarchat.server.auth import make_token
from tests.browser import CONNECTED, ServeProcess, require_chromium, wait_for, wait_sessions
from tests.configs import greedy_default

pytestmark = pytest.mark.slow

SECRET = "browser-test-secret-0123456789abcdef-0123456789"


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> None:
    """Replaces conftest's asyncio check: playwright's sync API runs its own event loop here."""


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    require_chromium()
    path = greedy_default(tmp_path_factory.mktemp("config"), without=("avatar",))
    config = yaml.safe_load(path.read_text())
    config.setdefault("server", {})["auth"] = {"secret": SECRET}
    path.write_text(yaml.safe_dump(config))
    with ServeProcess(config=path) as server:
        yield server


def open_recording(browser: Any, url: str) -> tuple[Any, list[tuple[str, str | None]]]:
    """A page at ``url`` and the (url, Authorization header) of every request it makes."""
    page = browser.new_context().new_page()
    seen: list[tuple[str, str | None]] = []
    page.on("request", lambda req: seen.append((req.url, req.headers.get("authorization"))))
    page.goto(url)
    page.wait_for_function("() => window.avatarchat !== undefined")
    return page, seen


def test_the_page_uses_the_token_of_its_link_and_says_when_it_has_none(
        quiet_browser: Any, auth_server: ServeProcess, tmp_path: Path) -> None:
    token = make_token(SECRET, "browser-test", 600)
    page, seen = open_recording(quiet_browser, f"{auth_server.url}?raw=1&token={token}")
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 60)
        wait_sessions(auth_server, 1)
        api = {u.split("/")[-1]: auth for u, auth in seen if "/api/" in u}
        assert api == {"config": f"Bearer {token}", "offer": f"Bearer {token}"}
        # The token travels in no other URL than the page's own.
        assert [u for u, _ in seen if token in u] == [f"{auth_server.url}?raw=1&token={token}"]
    finally:
        page.click("#stop")
        page.context.close()
    wait_sessions(auth_server, 0)

    page, _ = open_recording(quiet_browser, f"{auth_server.url}?raw=1")
    try:
        page.click("#start")
        banner = wait_for(page, "() => !document.querySelector('#banner').hidden && "
                                "document.querySelector('#banner-text').textContent", 20)
        assert "needs an access link with a token" in banner
    finally:
        page.context.close()
