"""The ``fyp-core`` command: ``demo`` serves a feed over a synthetic catalogue and prints figures."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fyp-core", description=__doc__)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="run the synthetic end-to-end demo and print its figures")
    d.add_argument("--slots", type=int, default=1_000_000, help="slots to assign (default 1M)")
    d.add_argument("--explore-rate", type=float, default=0.05)
    d.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.version:
        from fyp_core import __version__

        print(__version__)
        return 0
    if args.command == "demo":
        from fyp_core.demo import run_demo

        return run_demo(args)
    _build_parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
