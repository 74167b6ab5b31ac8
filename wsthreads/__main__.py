"""``python -m wsthreads COMMAND``: the package's command-line tools.

python -m wsthreads merge-traces server.json client.json -o run.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import trace


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (1 with one line on stderr if it failed)."""
    parser = argparse.ArgumentParser(prog="python -m wsthreads", description="wsthreads' command-line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    merging = commands.add_parser(
        "merge-traces", help="one timeline from the --trace files of several processes (Perfetto opens it)"
    )
    merging.add_argument("traces", nargs="+", metavar="TRACE")
    merging.add_argument("-o", "--output", required=True, metavar="FILE")
    args = parser.parse_args(argv)
    try:
        trace.merge(args.traces, args.output)
    except (OSError, ValueError, KeyError) as error:
        parser.exit(1, f"{parser.prog}: error: cannot merge the traces: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
