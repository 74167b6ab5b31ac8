"""``python -m wsthreads publish``: publish one message from a shell script or a cron job.

python -m wsthreads publish --broker redis://localhost:6379/0 --topic news "hello"
"""

from __future__ import annotations

import argparse
from typing import Any

from .broker import BrokerError, publish


def add_command(commands: Any) -> None:
    """Add ``publish`` to the subcommands of ``python -m wsthreads`` (argparse's subparsers)."""
    publishing = commands.add_parser(
        "publish", help="publish a message to a topic; prints its id (every subscriber gets it once)"
    )
    publishing.add_argument(
        "--broker", required=True, metavar="URL", help="the servers' broker: redis://HOST:PORT/DB"
    )
    publishing.add_argument("--topic", required=True, metavar="NAME")
    publishing.add_argument("message", metavar="MESSAGE")
    publishing.set_defaults(run=run)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Publish; print the message's id. Exits with 1 and one line on stderr if it cannot."""
    if args.broker.startswith("memory:"):
        parser.exit(
            1,
            f"{parser.prog} publish: error: an in-process broker lives in one process:"
            " give the servers' redis://HOST:PORT/DB\n",
        )
    try:
        print(publish(args.topic, args.message, broker=args.broker))
    except (ValueError, TypeError, BrokerError) as error:
        parser.exit(1, f"{parser.prog} publish: error: {error}\n")
    return 0
