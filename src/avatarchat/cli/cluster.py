"""``avatarchat cluster``: run sessions across a Ray cluster (``pip install 'avatarchat[cluster]'``).

  local   start a Ray head and N session nodes on this machine, in the foreground
          (Ctrl-C stops them all); then ``avatarchat serve --cluster auto``
  status  the nodes, their session slots, live sessions, draining
  drain   stop new sessions on a node (live ones finish); ``--undo`` resumes

Nodes join the usual Ray way, each advertising its session slots:
``ray start --address=HEAD:6379 --resources='{"avatarchat_session": 4}'`` (4: what
``avatarchat bench load`` measured for that machine).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import Any

from avatarchat.cli.errors import UserError
from avatarchat.cli.progress import say


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cluster", help="sessions across a Ray cluster: local, status, drain",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(title="commands", metavar="COMMAND")
    local = commands.add_parser("local", help="a head and N session nodes on this machine (foreground)")
    local.add_argument("--nodes", type=int, default=2, help="session nodes (default 2)")
    local.add_argument("--sessions-per-node", type=int, default=2, help="slots each node advertises (default 2)")
    local.set_defaults(run=_local)
    status = commands.add_parser("status", help="nodes, slots, live sessions, draining")
    status.add_argument("--address", default="auto", help="the Ray address (default: auto)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=_status)
    drain = commands.add_parser("drain", help="stop new sessions on NODE; live ones finish")
    drain.add_argument("node", metavar="NODE", help="node id, or a unique prefix of it (see status)")
    drain.add_argument("--address", default="auto", help="the Ray address (default: auto)")
    drain.add_argument("--undo", action="store_true", help="take new sessions there again")
    drain.set_defaults(run=_drain)
    p.set_defaults(run=lambda _args: p.print_help() or 2)


def _admin() -> Any:
    from avatarchat.cluster import ClusterUnavailable, admin

    return admin, ClusterUnavailable


def _status(args: argparse.Namespace) -> int:
    admin, unavailable = _admin()
    try:
        rows = admin.status(args.address)
    except unavailable as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no node advertises avatarchat_session slots")
        return 0
    print(f"{'NODE':<14}{'IP':<16}{'SLOTS':>6}{'LIVE':>6}{'HELD':>6}{'RSS MB':>8}  STATE")
    for r in rows:
        state = r["state"] + (", draining" if r["draining"] else "")
        rss = "-" if r.get("rss_mb") is None else f"{r['rss_mb']:.0f}"
        print(f"{r['node'][:12]:<14}{str(r['ip']):<16}{r['capacity']:>6}{r['live']:>6}{r['held']:>6}{rss:>8}  {state}")
    print(f"{sum(r['live'] for r in rows)} live session(s) on {len(rows)} node(s), "
          f"{sum(r['capacity'] for r in rows)} slot(s)")
    return 0


def _drain(args: argparse.Namespace) -> int:
    admin, unavailable = _admin()
    try:
        st = admin.drain(args.node, args.address, on=not args.undo)
    except unavailable as exc:
        raise UserError(str(exc)) from None
    verb = "draining: no new sessions there" if st["draining"] else "taking new sessions again"
    print(f"node {st['node'][:12]} {verb}; {st['live']} live session(s)")
    return 0


def _local(args: argparse.Namespace) -> int:
    from avatarchat.cluster import ClusterUnavailable
    from avatarchat.cluster.local import LocalCluster

    try:
        cluster = LocalCluster(args.nodes, args.sessions_per_node)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    stop = threading.Event()
    previous: dict[int, Any] = {}
    try:
        say(f"starting a Ray head and {args.nodes} node(s) of {args.sessions_per_node} session(s) on 127.0.0.1 …")
        try:
            address = cluster.start()
        except ClusterUnavailable as exc:
            raise UserError(str(exc)) from None
        # After start: Ray's node objects set their own SIGTERM handler (exit at once), and
        # this one must win so that `stop` runs and reports.
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        say(f"cluster ready at {address}")
        say(f"  front door: avatarchat serve --cluster {address}   (or --cluster auto)")
        say(f"  status:     avatarchat cluster status --address {address}")
        say("Ctrl-C stops every process of this cluster")
        while not stop.wait(0.5):
            pass
        say("stopping the cluster …")
    finally:
        cluster.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    say("stopped")
    return 0
