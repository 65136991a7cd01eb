"""The performance suite: ``nox -s bench [-- --vs-torchserve] [--duration S] [--only GROUP]``.

Builds the models (echo, sleep10, a small CNN) into a fresh model store, starts trioserve as a
user would (``trioserve run``), drives it with wrk and a grpcio client, and times its start,
its SIGTERM and a worker's restart after kill -9. With ``--vs-torchserve`` it installs
TorchServe 0.12.0 in its own virtual environment, serves the same archives with the same
settings, runs every scenario on both servers one after the other and reports each figure as a
ratio trioserve / TorchServe. Output: a Markdown table on stdout, ``results.json`` and
``bench.png`` (req/s and p99 against concurrency) in ``--out``. Figures only: nothing is
asserted, and client and servers share the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import LUA_POST, ROOT, WRK_MISSING, have_wrk, lua_post_file
from bench.models import SOURCES, build_archive, cnn_input
from bench.report import TORCHSERVE, TRIOSERVE, Measurement, chart, markdown, rows, write_json
from bench.scenarios import Load, grpc_load, lifecycle, rest_load, sleep_efficiency
from bench.servers import Server, start_server
from bench.torchserve_env import DEFAULT_VENV, ensure_torchserve

# (registered name, source, workers, batch size); max_batch_delay is BATCH_DELAY_MS for all.
REGISTRATIONS = (
    ("echo1", "echo", 1, 1),
    ("echo2", "echo", 2, 1),
    ("sleep10_b1", "sleep10", 1, 1),
    ("sleep10_b8", "sleep10", 1, 8),
    ("cnn_b1", "cnn", 2, 1),
    ("cnn_b8", "cnn", 2, 8),
)
BATCH_DELAY_MS = 5
STARTUP_MODELS = ("echo", "sleep10", "cnn")
ECHO_CONNS = (1, 8, 32, 64)
SLEEP_CONNS = (8, 32)
CNN_CONNS = (8, 64)
GRPC_CONNS = (1, 32)
GRPC_MODEL = "echo2"


def build_store(store: Path, scratch: Path) -> None:
    for name in STARTUP_MODELS:
        build_archive(store, name, SOURCES[name], scratch)
    for name, source, _, _ in REGISTRATIONS:
        build_archive(store, name, SOURCES[source], scratch)


def load_plan(scripts: dict[str, Path]) -> list[tuple[str, Load, tuple[int, ...]]]:
    """(group, load, concurrencies) for every REST load scenario, in the order run."""
    plan: list[tuple[str, Load, tuple[int, ...]]] = []
    for name, source, workers, batch in REGISTRATIONS:
        script = scripts["cnn" if source == "cnn" else "text"]
        load = Load(name, script, workers, batch)
        if source == "echo":
            plan.append((f"echo w={workers}", load, ECHO_CONNS))
        elif source == "sleep10":
            plan.append((f"sleep10 b={batch}", load, SLEEP_CONNS))
        else:
            plan.append((f"cnn b={batch}", load, CNN_CONNS))
    return plan


class Suite:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.store = work / "store"
        self.kinds = [TRIOSERVE, TORCHSERVE] if args.vs_torchserve else [TRIOSERVE]
        self.venv: Path | None = None
        self.measurements: list[Measurement] = []
        self._runs = 0

    def wanted(self, group: str) -> bool:
        return not self.args.only or any(group.startswith(o) for o in self.args.only)

    def start(self, kind: str, models: list[str] | None = None) -> Server:
        self._runs += 1
        return start_server(
            kind,
            self.work / f"{kind}-{self._runs}",
            self.store,
            models=models,
            torchserve_venv=self.venv,
        )

    def record(self, group: str, conns: int | None, kind: str, figures: dict[str, float]) -> None:
        self.measurements.append(Measurement(group, conns, kind, figures))
        shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items())
        label = group if conns is None else f"{group} c={conns}"
        print(f"  {label:<22} {kind:<11} {shown}", flush=True)

    def alternate(self, index: int) -> list[str]:
        """The servers in the order they run a scenario: swapped every other scenario, so
        neither always goes first on a machine warming up."""
        return self.kinds if index % 2 == 0 else self.kinds[::-1]

    def lifecycle(self) -> None:
        if not self.wanted("startup") and not self.wanted("restart"):
            return
        print("start, memory, kill -9, SIGTERM", flush=True)
        models = [f"{name}={name}.mar" for name in STARTUP_MODELS]
        results: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {}
        for run in range(self.args.startup_runs):
            for kind in self.alternate(run):
                server = self.start(kind, models)
                results.setdefault(kind, []).append(lifecycle(server, list(STARTUP_MODELS), "echo"))
        for kind, runs in results.items():
            # The fastest run of each: the one least disturbed by whatever else ran meanwhile.
            startup = min((r[0] for r in runs), key=lambda f: f["three models READY s"])
            restart = min((r[1] for r in runs), key=lambda f: f["kill -9 -> serving s"])
            self.record("startup", None, kind, startup)
            self.record("restart", None, kind, restart)

    def loads(self, scripts: dict[str, Path]) -> None:
        plan = [p for p in load_plan(scripts) if self.wanted(p[0])]
        want_grpc = self.wanted("grpc")
        if not plan and not want_grpc:
            return
        servers = {kind: self.start(kind) for kind in self.kinds}
        try:
            for server in servers.values():
                server.wait_healthy()
                for name, _, workers, batch in REGISTRATIONS:
                    if any(load.model == name for _, load, _ in plan) or (
                        want_grpc and name == GRPC_MODEL
                    ):
                        server.register(f"{name}.mar", name, workers, batch, BATCH_DELAY_MS)
            index = 0
            for group, load, conns_list in plan:
                print(group, flush=True)
                for server in servers.values():  # warm-up: JIT, caches, connection pools
                    rest_load(server, load, 8, self.args.warmup)
                for conns in conns_list:
                    for kind in self.alternate(index):
                        figures = rest_load(servers[kind], load, conns, self.args.duration)
                        if group.startswith("sleep10"):
                            figures = sleep_efficiency(figures, load)
                        self.record(group, conns, kind, figures)
                    index += 1
            if want_grpc:
                print("grpc echo", flush=True)
                for server in servers.values():
                    grpc_load(server, GRPC_MODEL, 8, self.args.warmup)
                for conns in GRPC_CONNS:
                    for kind in self.alternate(index):
                        figures = grpc_load(servers[kind], GRPC_MODEL, conns, self.args.duration)
                        self.record("grpc echo", conns, kind, figures)
                    index += 1
        finally:
            for server in servers.values():
                server.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nox -s bench --", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per load scenario")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per model")
    parser.add_argument("--startup-runs", type=int, default=2, help="starts per server")
    parser.add_argument("--vs-torchserve", action="store_true", help="compare with TorchServe")
    parser.add_argument("--torchserve-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        metavar="GROUP",
        help="scenario groups by prefix: echo, sleep10, cnn, grpc, startup, restart",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not have_wrk():
        print(WRK_MISSING, file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="trioserve-bench-"))
    suite = Suite(args, work)
    began = time.time()
    try:
        if args.vs_torchserve:
            suite.venv = ensure_torchserve(args.torchserve_venv)
        suite.store.mkdir()
        build_store(suite.store, work / "sources")
        scripts = {"text": work / "post.lua", "cnn": work / "cnn.lua"}
        scripts["text"].write_text(LUA_POST)
        scripts["cnn"].write_text(
            lua_post_file(cnn_input(work / "cnn.bin"), "application/octet-stream")
        )
        print(f"bench: {args.duration:g} s per load, servers: {', '.join(suite.kinds)}", flush=True)
        suite.lifecycle()
        suite.loads(scripts)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    table = markdown(rows(suite.measurements))
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, object] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
        "duration_s": args.duration,
        "servers": suite.kinds,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }
    write_json(args.out / "results.json", suite.measurements, meta)
    (args.out / "results.md").write_text(table)
    drawn = chart(args.out / "bench.png", suite.measurements)
    print(f"written: {args.out / 'results.json'}, results.md" + (", bench.png" if drawn else ""))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
