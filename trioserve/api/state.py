"""What the API functions share: the configuration and the model registry."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

from trioserve.config import Config
from trioserve.models.registry import Registry


@dataclass
class ServerState:
    config: Config
    registry: Registry
    extract_root: Path
    hostname: str = field(default_factory=platform.node)
    startup_models: list[str] = field(default_factory=list)
