"""``python -m wsthreads COMMAND``: the package's command-line tools.

python -m wsthreads publish --broker redis://localhost:6379/0 --topic news "hello"
python -m wsthreads merge-traces server.json client.json -o run.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import trace
from .lines import shown_path
from .pubsub.broker import BrokerError, publish


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (1 with one line on stderr if it failed)."""
    parser = argparse.ArgumentParser(prog="python -m wsthreads", description="wsthreads' command-line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    publishing = commands.add_parser(
        "publish", help="publish a message to a topic; prints its id (every subscriber gets it once)"
    )
    publishing.add_argument(
        "--broker", required=True, metavar="URL", help="the servers' broker: redis://HOST:PORT/DB"
    )
    publishing.add_argument("--topic", required=True, metavar="NAME")
    publishing.add_argument("message", metavar="MESSAGE")
    merging = commands.add_parser(
        "merge-traces", help="one timeline from the --trace files of several processes (Perfetto opens it)"
    )
    merging.add_argument("traces", nargs="+", metavar="TRACE")
    merging.add_argument("-o", "--output", required=True, metavar="FILE")
    args = parser.parse_args(argv)
    if args.command == "publish":
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
    try:
        merged = trace.merge(args.traces, args.output)
    except (OSError, ValueError, KeyError) as error:
        parser.exit(1, f"{parser.prog}: error: cannot merge the traces: {error}\n")
    traces = "1 trace" if len(args.traces) == 1 else f"{len(args.traces)} traces"
    print(
        f"merged {traces} into {shown_path(str(merged.path))}: {merged.events} events;"
        f" open it in {trace.OPEN_WITH}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
