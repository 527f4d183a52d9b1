"""``avatarchat token``: print an access token for a server with ``server.auth.secret`` set.

The token is signed with the config's secret (``secret: ${AVATARCHAT_SECRET}``), names its
holder (``--name``, shown in the server's log) and expires after ``--ttl`` (at most
``server.auth.max_ttl_s``). Give a visitor ``https://HOST:PORT/?token=TOKEN``: the page sends
it with its API requests. A token cannot be revoked before it expires except by changing
the secret, which ends every token at once.
"""

from __future__ import annotations

import argparse

from avatarchat.cli.errors import UserError
from avatarchat.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("token", help="print an access token for `serve` with server.auth on",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="YAML config with server.auth.secret (default: the embedded one)")
    p.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d … (default 1h)")
    p.add_argument("--name", default="guest", help="who the token is for, shown in the server log (default guest)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(make(args.config, args.ttl, args.name))
    return 0


def make(config_path: str | None, ttl: str, name: str) -> str:
    """A token from the config's secret; ``UserError`` (one line) when it cannot be made."""
    from avatarchat.server.auth import make_token, parse_ttl, secret_problem

    auth = load_config(config_path).server.auth
    problem = secret_problem(auth.secret)
    if problem:
        raise UserError(problem)
    try:
        ttl_s = parse_ttl(ttl)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if ttl_s > auth.max_ttl_s:
        raise UserError(f"--ttl {ttl} is {ttl_s} s, longer than server.auth.max_ttl_s ({auth.max_ttl_s} s)")
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise UserError("--name must be 1 to 64 printable characters")
    assert auth.secret is not None
    return make_token(auth.secret, name, ttl_s)
