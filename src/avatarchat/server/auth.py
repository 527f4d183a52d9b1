"""Who may call the API: signed access tokens, the page's own origin, the client's address.

Tokens follow LiveKit's model, sized for one server: an HS256 JWT signed with
``server.auth.secret`` that names its holder (``sub``), says when it was made (``iat``) and
when it stops working (``exp``), and carries a random id (``jti``) for the logs. Nothing is
stored on the server; a token cannot be revoked before it expires except by changing the
secret, which is why lifetimes are capped (``server.auth.max_ttl_s``).

The origin and Host rules hold with auth on or off: a browser sends ``Origin`` with every
cross-site request, so a page on another site that tries to drive this server is refused
before anything runs; and on a loopback bind only loopback Host names are served, which is
what defeats DNS rebinding (a hostile name re-pointed at 127.0.0.1 is then same-origin with
its own page, but its Host header still names it).
"""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import jwt

#: The shortest secret accepted: 32 characters is 192+ bits of a random base64 string.
MIN_SECRET_CHARS = 32
ALGORITHM = "HS256"
_CLAIMS = ["exp", "iat", "sub", "jti"]
_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TokenError(Exception):
    """A token is missing, malformed, forged or expired; the text is safe to show the client."""


def secret_problem(secret: str | None) -> str | None:
    """Why ``secret`` cannot sign tokens (one line), or None if it can."""
    if not secret:
        return "server.auth.secret is not set (e.g. secret: ${AVATARCHAT_SECRET} in the config)"
    if len(secret) < MIN_SECRET_CHARS:
        return (f"server.auth.secret is {len(secret)} characters; use at least {MIN_SECRET_CHARS} "
                "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return None


def parse_ttl(text: str) -> int:
    """Seconds in a lifetime such as ``90``, ``90s``, ``15m``, ``1h`` or ``7d``; ValueError if not one."""
    m = _TTL.match(text)
    if m is None:
        raise ValueError(f"--ttl {text!r} is not a duration such as 90s, 15m, 1h or 7d")
    seconds = int(float(m.group(1)) * _UNITS[m.group(2)])
    if seconds < 1:
        raise ValueError(f"--ttl {text!r} is shorter than a second")
    return seconds


def make_token(secret: str, name: str, ttl_s: int, *, now: float | None = None) -> str:
    """A token for ``name`` that expires ``ttl_s`` seconds from ``now`` (default: the clock)."""
    problem = secret_problem(secret)
    if problem:
        raise ValueError(problem)
    issued = int(time.time() if now is None else now)
    claims = {"sub": name, "iat": issued, "exp": issued + int(ttl_s), "jti": uuid.uuid4().hex}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def check_token(secret: str, token: str) -> dict[str, Any]:
    """The claims of a valid token; ``TokenError`` for anything else (expired, signed with
    another secret or algorithm, ``alg: none``, a claim missing, not a JWT at all)."""
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM],
                            options={"require": _CLAIMS, "verify_iat": False})
    except jwt.ExpiredSignatureError:
        raise TokenError("the access token has expired; ask for a new link") from None
    except jwt.PyJWTError:
        raise TokenError("the access token is not valid for this server") from None
    if not isinstance(claims.get("sub"), str):
        raise TokenError("the access token is not valid for this server")
    return dict(claims)


def bearer_token(headers: Any, query: Any) -> str | None:
    """The token of a request: ``Authorization: Bearer <token>``, else ``?token=``."""
    value = headers.get("Authorization", "")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return str(token.strip())
    from_query = query.get("token")
    return str(from_query) if from_query else None


# -- origin and Host --------------------------------------------------------------------------


def is_loopback_bind(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(host: str) -> tuple[str, int | None]:
    """``("name", port)`` of a Host header value (``[::1]:8282`` -> ``("::1", 8282)``);
    the port is None when absent, -1 when it is not a number."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif host.count(":") == 1:
        name, port = host.split(":")
    else:
        name, port = host, None
    if port is None:
        return name, None
    return name, int(port) if port.isdigit() and len(port) <= 5 else -1


def loopback_host_ok(host: str | None, port: int, scheme: str, bind_host: str,
                     allowed: Sequence[str] = ()) -> bool:
    """On a loopback bind, whether the Host header names this server: ``localhost``,
    ``127.0.0.1``, ``[::1]`` (or the bound address) with the port it listens on, or the host
    name of an ``allowed`` origin (a reverse proxy on this machine that passes its own Host)."""
    if not host:
        return False
    name, given = split_host(host)
    if given != -1 and any(name == split_host(_origin_host(a))[0] for a in allowed):
        return True
    if name not in (*_LOOPBACK_NAMES, bind_host.lower()):
        return False
    default = 443 if scheme == "https" else 80
    return (given if given is not None else default) == port


def _origin_host(origin: str) -> str:
    return origin.strip().lower().partition("://")[2].rstrip("/")


def normal_origin(origin: str) -> str:
    """``scheme://host[:port]`` lower-cased, without the scheme's default port."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep:
        return origin.strip().lower()
    name, port = split_host(rest.rstrip("/"))
    default = {"http": 80, "https": 443}.get(scheme)
    shown = f"[{name}]" if ":" in name else name
    return f"{scheme}://{shown}" if port is None or port == default else f"{scheme}://{shown}:{port}"


def origin_ok(origin: str, served: str, allowed: list[str]) -> bool:
    """Whether a request's ``Origin`` is the served origin or one of ``allowed``."""
    mine = normal_origin(origin)
    return mine == normal_origin(served) or any(mine == normal_origin(a) for a in allowed)


# -- the client's address ---------------------------------------------------------------------


def parse_networks(entries: list[str]) -> list[Network]:
    """``server.trusted_proxies`` as networks (an address is a /32 or /128); ValueError
    naming the first entry that is neither."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"server.trusted_proxies: {entry!r} is not an IP address or network") from None
    return out


def is_trusted(address: str | None, networks: list[Network]) -> bool:
    """Whether ``address`` is one of the trusted proxies."""
    return bool(address) and _in(str(address), networks)


def _in(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(remote: str | None, forwarded_for: str | None, trusted: list[Network]) -> str:
    """The address a per-client cap counts: ``remote``, or when ``remote`` is a trusted proxy,
    the last ``X-Forwarded-For`` hop that is not one (hops further left are the client's own
    claims, which it could forge). Falls back to ``remote`` when that hop is not an address."""
    remote = remote or ""
    if not forwarded_for or not _in(remote, trusted):
        return remote
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return remote
    return hops[0] if hops else remote
