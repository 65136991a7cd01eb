"""What every fuzz target shares: its seed corpus, the ``--smoke`` fallback and the atheris run.

A target module defines ``check(data: bytes) -> None`` (raises only on a broken contract),
``SEEDS`` (built-in seed inputs) and ``mutate(rng, data) -> bytes``, then calls :func:`main`.
Seeds are also read from ``fuzz/corpus/<target>/`` (one input per file).

``python fuzz/fuzz_X.py --smoke N [--seed S] [--seconds T]`` checks the seeds, then N mutated
inputs (or as many as fit in T seconds). Without ``--smoke`` the target runs under atheris with
any libFuzzer flags and corpus directories given; ``nox -s fuzz`` runs each target that way.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "corpus"


def corpus(name: str) -> list[bytes]:
    directory = CORPUS / name
    if not directory.is_dir():
        return []
    return [p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()]


def splice(
    rng: random.Random, data: bytes, tokens: Sequence[bytes], seeds: Sequence[bytes]
) -> bytes:
    """One to four byte-level edits of ``data``: overwrite a byte, insert a token (repeated up
    to three times), delete a run, copy a run elsewhere, or insert the start of a seed."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randint(0, len(out))
        if op == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.choice(tokens) * rng.randint(1, 3)
        elif op == 2:
            del out[at : at + rng.randint(1, 8)]
        elif op == 3 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 24)]
        else:
            out[at:at] = rng.choice(seeds)[: rng.randint(0, 40)]
    return bytes(out)


def write_corpus(name: str, seeds: Sequence[bytes]) -> None:
    """Store ``seeds`` as ``fuzz/corpus/<name>/seed-NN`` (run once when a target's seeds change)."""
    directory = CORPUS / name
    directory.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        (directory / f"seed-{i:02d}").write_bytes(seed)


def main(
    argv: list[str],
    *,
    name: str,
    doc: str,
    check: Callable[[bytes], None],
    seeds: Sequence[bytes],
    mutate: Callable[[random.Random, bytes], bytes],
    generate: Callable[[random.Random, list[bytes]], bytes] | None = None,
) -> int:
    """Run the target as ``argv`` says; ``generate`` (default: a mutated seed, or now and then
    random bytes) makes each smoke input from the seed pool."""
    parser = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    parser.add_argument("--smoke", type=int, metavar="N", help="check N generated inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, help="with --smoke: stop after this long")
    parser.add_argument("--write-corpus", action="store_true", help="store SEEDS in corpus/")
    args, rest = parser.parse_known_args(argv[1:])
    if args.write_corpus:
        write_corpus(name, seeds)
        return 0
    if args.smoke is not None:
        rng = random.Random(args.seed)
        pool = [*seeds, *corpus(name)]
        for data in pool:
            check(data)
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        done = 0
        while done < args.smoke and (deadline is None or time.monotonic() < deadline):
            if generate is not None:
                check(generate(rng, pool))
            elif rng.random() < 0.1:
                check(rng.randbytes(rng.randint(0, 256)))
            else:
                check(mutate(rng, rng.choice(pool)))
            done += 1
        print(f"{done} inputs (+{len(pool)} seeds) kept the contract")
        return 0
    try:
        atheris: Any = importlib.import_module("atheris")
    except ImportError:
        print("atheris is not installed; run with --smoke N instead", file=sys.stderr)
        return 2
    atheris.instrument_all()
    atheris.Setup([argv[0], *rest], check)
    atheris.Fuzz()
    return 0
