"""Time-limited TURN credentials (the "TURN REST API" that coturn's ``use-auth-secret`` checks).

The server and the TURN server share one secret (coturn's ``static-auth-secret``). For each
session the server makes a username ``"<expiry unix time>:<name>"`` and a password
``base64(HMAC-SHA1(secret, username))``; coturn recomputes the HMAC from the username it is
given and refuses it once the expiry has passed. The page therefore only ever sees a
password that stops working by itself, never the secret or a long-lived password.

The expiry bounds when an allocation may be *made*: coturn 4.6.1 goes on refreshing an
allocation after its credentials expired (checked against the real server), so a session
longer than ``turn.ttl_s`` keeps its relay, and a leaked credential opens nothing new later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from typing import Any

from avatarchat.server.settings import ServerSettings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: Longest label kept in a username (coturn logs it; STUN allows 513 bytes in all).
MAX_NAME = 64


def safe_name(name: str) -> str:
    """``name`` as a username label: letters, digits, ``. _ -`` only (no separator, nothing a
    log reader could mistake), at most ``MAX_NAME`` characters."""
    return _UNSAFE.sub("_", name)[:MAX_NAME]


def rest_credentials(secret: str, name: str, ttl_s: int, now: float) -> tuple[str, str]:
    """``(username, credential)`` valid until ``now + ttl_s`` (unix seconds, rounded up).

    ``name`` is only a label (coturn logs it); it must not hold the separator ``:``, which
    would make the expiry ambiguous to a TURN server that splits on the last one.
    """
    if not secret:
        raise ValueError("the TURN secret is empty")
    if ":" in name:
        raise ValueError(f"a TURN credential name may not contain ':' (got {name!r})")
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive (got {ttl_s})")
    username = f"{math.ceil(now + ttl_s)}:{name}" if name else str(math.ceil(now + ttl_s))
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def turn_server_entry(settings: ServerSettings, name: str, now: float | None = None) -> dict[str, Any] | None:
    """The ``server.turn`` entry with fresh credentials, or None when it is not configured
    (no URLs or no secret)."""
    turn = settings.turn
    if not turn.urls or not turn.secret:
        return None
    username, credential = rest_credentials(turn.secret, safe_name(name), turn.ttl_s,
                                            time.time() if now is None else now)
    return {"urls": list(turn.urls), "username": username, "credential": credential}


def ice_servers_for_client(settings: ServerSettings, name: str, now: float | None = None) -> list[dict[str, Any]]:
    """The ICE servers one client gets (``/api/config``): the static ``server.ice_servers``,
    then ``server.turn`` with credentials made now for ``name`` (any string: characters other
    than letters, digits and ``. _ -`` become ``_``). Each call makes new ones."""
    servers = [s.model_dump(exclude_none=True) for s in settings.ice_servers]
    entry = turn_server_entry(settings, name, now)
    if entry is not None:
        servers.append(entry)
    return servers
