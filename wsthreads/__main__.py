"""``python -m wsthreads COMMAND``: the package's command-line tools.

``publish`` (:mod:`wsthreads.pubsub.command`) and ``merge-traces``::

    python -m wsthreads merge-traces server.json client.json -o run.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import trace
from .lines import shown_path
from .pubsub import command as publish_command


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (1 with one line on stderr if it failed)."""
    parser = argparse.ArgumentParser(prog="python -m wsthreads", description="wsthreads' command-line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    publish_command.add_command(commands)
    merging = commands.add_parser(
        "merge-traces", help="one timeline from the --trace files of several processes (Perfetto opens it)"
    )
    merging.add_argument("traces", nargs="+", metavar="TRACE")
    merging.add_argument("-o", "--output", required=True, metavar="FILE")
    merging.set_defaults(run=merge_traces)
    args = parser.parse_args(argv)
    status: int = args.run(parser, args)
    return status


def merge_traces(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Merge the trace files into one; print where it is."""
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
