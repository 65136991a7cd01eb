"""The ``trioserve`` command: run, start, stop, config, archive."""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path

import trio

from trioserve import __version__, archiver
from trioserve.auth import KEY_FILE
from trioserve.config import Config
from trioserve.config_sources import load_config
from trioserve.errors import ConfigError
from trioserve.workflows import archiver as workflow_archiver

PID_FILE = Path(tempfile.gettempdir()) / ".model_server.pid"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trioserve", description="A PyTorch model server.")
    parser.add_argument("-v", "--version", action="version", version=f"trioserve {__version__}")
    sub = parser.add_subparsers(dest="command")

    def server_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ts-config", help="config.properties (or .toml) file")
        p.add_argument("--model-store", help="model store directory (overrides model_store)")
        p.add_argument("--workflow-store", help="workflow store directory")
        p.add_argument("--models", nargs="+", help="models to load: all, or [name=]archive ...")
        p.add_argument("--log-config", help="Python logging config (.ini, .json or .yaml)")
        p.add_argument("--foreground", action="store_true", help="stay attached")
        p.add_argument(
            "--ncs",
            "--no-config-snapshots",
            dest="ncs",
            action="store_true",
            help="neither read nor write config snapshots",
        )
        p.add_argument("--enable-model-api", action="store_true")
        p.add_argument(
            "--disable-token-auth", "--dt", dest="disable_token_auth", action="store_true"
        )

    server_flags(sub.add_parser("run", help="run the server in the foreground"))
    server_flags(sub.add_parser("start", help="start the server in the background"))
    stop = sub.add_parser("stop", help="stop a server started with `start`")
    stop.add_argument("--foreground", action="store_true", help="(accepted; stop always waits)")
    cfg = sub.add_parser("config", help="print the effective configuration")
    server_flags(cfg)
    cfg.add_argument("--effective", action="store_true", help="every key, value and source")
    archiver.add_arguments(
        sub.add_parser("archive", help="write a model archive (torch-model-archiver's flags)")
    )
    workflow_archiver.add_arguments(
        sub.add_parser(
            "workflow-archive",
            help="write a workflow archive (torch-workflow-archiver's flags)",
        )
    )
    return parser


def _snapshot_dir(args: argparse.Namespace) -> Path | None:
    """Where config snapshots are read and written (contract §5.4); None with ``--ncs``."""
    if args.ncs:
        return None
    return Path.cwd() / (os.environ.get("LOG_LOCATION") or "logs") / "config"


def _config(args: argparse.Namespace) -> Config:
    config = load_config(
        environ=os.environ,
        cwd=Path.cwd(),
        ts_config=args.ts_config,
        model_store=args.model_store,
        models=args.models,
        workflow_store=args.workflow_store,
        enable_model_api=args.enable_model_api,
        disable_token_auth=args.disable_token_auth,
        snapshot_dir=_snapshot_dir(args),
    )
    if config.model_store is None:
        raise ConfigError("Missing mandatory parameter --model-store")
    if not Path(config.model_store).is_dir():
        raise ConfigError(f"--model-store directory not found: {config.model_store}")
    return config


def _setup_logging(log_config: str | None) -> None:
    if log_config is None:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
        )
        return
    path = Path(log_config)
    if not path.is_file():
        raise ConfigError(f"--log-config file not found: {log_config}")
    if path.suffix in (".json", ".yaml", ".yml"):
        import yaml  # YAML is a superset of JSON

        spec = yaml.safe_load(path.read_text())
        if not isinstance(spec, dict):
            raise ConfigError(f"--log-config {log_config}: expected a logging dictConfig mapping")
        # Module loggers exist before the config is read; keep them unless the file says not.
        spec.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(spec)
    else:
        logging.config.fileConfig(path, disable_existing_loggers=False)


def _run(args: argparse.Namespace) -> int:
    from trioserve.server import serve

    _setup_logging(args.log_config)
    config = _config(args)
    for key, value, source in config.effective():
        logging.getLogger("trioserve.config").debug("%s = %s (%s)", key, value, source)
    try:
        trio.run(partial(serve, config, snapshot_dir=_snapshot_dir(args)))
    except BaseExceptionGroup as group:
        error = _startup_error(group)
        if error is None:
            raise
        raise error from None
    return 0


def _startup_error(group: BaseExceptionGroup[BaseException]) -> ConfigError | None:
    """The ConfigError that stopped the start (a snapshot that cannot be restored), out of the
    nurseries' exception groups; None when the group holds anything else."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, ConfigError) else None


def _running_pid() -> int | None:
    try:
        pid = int(PID_FILE.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _start(args: argparse.Namespace, argv: list[str]) -> int:
    if args.foreground:
        return _run(args)
    if _running_pid() is not None:
        print(
            "trioserve is already running, please use trioserve stop to stop it.", file=sys.stderr
        )
        return 1
    config = _config(args)  # fail here, in the caller's terminal, on a bad configuration
    log_dir = Path(os.environ.get("LOG_LOCATION", "logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "trioserve.log"
    child_argv = ["run" if a == "start" else a for a in argv]
    with open(log_path, "ab") as log:
        offset = log.tell()
        process = subprocess.Popen(
            [sys.executable, "-m", "trioserve", *child_argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    PID_FILE.write_text(str(process.pid))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            print(
                f"trioserve exited during startup (code {process.returncode}); see {log_path}",
                file=sys.stderr,
            )
            PID_FILE.unlink(missing_ok=True)
            return 1
        with open(log_path, "rb") as log:
            log.seek(offset)
            listening = b"Model server started." in log.read()
        if listening and _healthy(config):
            print(f"trioserve started (pid {process.pid}); logs in {log_path}")
            return 0
        time.sleep(0.1)
    print(
        f"trioserve did not become ready in {START_TIMEOUT_S:.0f} s; see {log_path}",
        file=sys.stderr,
    )
    return 1


def _healthy(config: Config) -> bool:
    """Whether ``/ping`` answers Healthy (plain HTTP over TCP; other schemes count as up once
    the server says it is listening)."""
    address = config.inference_address
    if address.scheme != "http":
        return True
    host = address.host if address.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    ping = urllib.request.Request(f"http://{host}:{address.port}/ping")
    if not config.disable_token_authorization:  # /ping needs the inference key (§0.6)
        try:
            key = json.loads((Path.cwd() / KEY_FILE).read_text())["inference"]["key"]
            ping.add_header("Authorization", f"Bearer {key}")
        except (OSError, ValueError, KeyError, TypeError):
            return False
    try:
        with urllib.request.urlopen(ping, timeout=5) as reply:
            return bool(reply.status == 200)
    except (OSError, ValueError):
        return False


def _stop() -> int:
    pid = _running_pid()
    if pid is None:
        print("trioserve is not currently running.")
        PID_FILE.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        print(f"trioserve (pid {pid}) did not stop within {STOP_TIMEOUT_S:.0f} s", file=sys.stderr)
        return 1
    PID_FILE.unlink(missing_ok=True)
    (Path.cwd() / KEY_FILE).unlink(missing_ok=True)  # as `torchserve --stop` does (§0.6)
    print("trioserve has stopped.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "start":
            return _start(args, argv)
        if args.command == "stop":
            return _stop()
        if args.command == "archive":
            return archiver.main(args)
        if args.command == "workflow-archive":
            return workflow_archiver.main(args)
        if args.command == "config":
            config = load_config(
                environ=os.environ,
                cwd=Path.cwd(),
                ts_config=args.ts_config,
                model_store=args.model_store,
                models=args.models,
                workflow_store=args.workflow_store,
                snapshot_dir=_snapshot_dir(args),
            )
            for key, value, source in config.effective():
                print(f"{key} = {value}    # {source}")
            return 0
    except ConfigError as exc:
        print(f"trioserve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.print_help()
    return 1
