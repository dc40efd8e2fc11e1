"""``python -m trow <command>``: trow's one-shot commands (the server itself runs under twistd).

    python -m trow gc --data-dir DIR [--dry-run] [--config FILE]
    python -m trow migrate --data-dir DIR --to postgresql://... [--force]
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

USAGE = """usage: python -m trow <command> [options]

commands:
  gc    one garbage collection pass over a data dir no trow server is using:
        python -m trow gc --data-dir DIR [--dry-run] [--config FILE]
  migrate
        copy a stopped single-node trow's metadata into PostgreSQL, for replicas:
        python -m trow migrate --data-dir DIR --to postgresql://... [--force]

The server runs as 'twistd -n trow [options]' (see 'twistd trow --help').
"""


def _gc(argv: Sequence[str]) -> int:
    from trow.gccli import main as gc_main

    return gc_main(argv)


def _migrate(argv: Sequence[str]) -> int:
    from trow.migrate import main as migrate_main

    return migrate_main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"gc": _gc, "migrate": _migrate}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command; usage and status 1 without one, or with one that does not exist."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if not args or args[0] not in COMMANDS:
        sys.stderr.write(USAGE)
        if args:
            sys.stderr.write(f"trow: error: unknown command {args[0]!r}\n")
        return 1
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
