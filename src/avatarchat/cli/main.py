"""``avatarchat``: the command line. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from avatarchat.audio.io import AudioInputError
from avatarchat.cli.errors import UserError
from avatarchat.engine.config import ConfigError
from avatarchat.engine.handler import HandlerLoadError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    _quiet_libraries(args.verbose)
    try:
        return int(args.run(args) or 0)
    except (UserError, ConfigError, AudioInputError, HandlerLoadError) as exc:
        print(f"avatarchat: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avatarchat: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output was piped into `head` and closed: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (so the exit flush fails quietly)
        return 0


def build_parser() -> argparse.ArgumentParser:
    from avatarchat.cli import avatar, check, cluster, models, serve, talk, token
    from avatarchat.bench import cli as bench

    parser = argparse.ArgumentParser(
        prog="avatarchat", description="Real-time conversation with a talking digital human, offline on the CPU."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    modules: list[Callable[[argparse._SubParsersAction], None]] = [  # type: ignore[type-arg]
        talk.add_parser, check.add_check_config_parser, models.add_parser, bench.add_parser,
        avatar.add_parser, serve.add_parser, token.add_parser, cluster.add_parser,
    ]
    for add in modules:
        add(sub)
    return parser


def _quiet_libraries(verbose: bool) -> None:
    # Model libraries print progress bars and hub warnings that mean nothing offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


if __name__ == "__main__":
    sys.exit(main())
