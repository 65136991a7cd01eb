"""What the API functions share: the configuration and the model registry."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from trioserve.config import Config
from trioserve.models.registry import Registry


@dataclass
class ServerState:
    config: Config
    registry: Registry
    extract_root: Path
    hostname: str = field(default_factory=socket.gethostname)
    startup_models: list[str] = field(default_factory=list)
