"""Worker entry point: ``python -m backend --fd N``."""

from __future__ import annotations

import argparse
import logging
import sys

from backend.worker import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to the frontend")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    return run(args.fd)


if __name__ == "__main__":
    sys.exit(main())
