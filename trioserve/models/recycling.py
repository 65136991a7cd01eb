"""Worker recycling (beyond TorchServe): when a healthy worker is replaced by a fresh process.

A handler that leaks memory, or grows caches without bound, is easier to live with when its
process is renewed now and then. Two optional limits, per model in model-config.yaml
(``maxRequestsPerWorker``, ``maxWorkerRssMb``) or server-wide in the config
(``max_requests_per_worker``, ``max_worker_rss_mb``); 0 turns a limit off. A worker past either
finishes the batch in hand, then its supervisor replaces the process (same worker id, same GPU,
no back-off); the jobs queued meanwhile go to other workers or wait for it.

The decision is a pure function of what one incarnation has done; measuring the RSS is the one
piece of I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

MIB = 1 << 20


@dataclass(frozen=True)
class RecyclePolicy:
    """A model version's recycling limits; 0 means no limit."""

    max_requests: int = 0
    max_rss_mb: int = 0

    @property
    def measures_rss(self) -> bool:
        return self.max_rss_mb > 0

    def reason(self, requests_served: int, rss_bytes: int | None) -> str | None:
        """Why the incarnation that has served ``requests_served`` requests and now holds
        ``rss_bytes`` (None: not measured) should be replaced, or None to keep it."""
        if self.max_requests > 0 and requests_served >= self.max_requests:
            return f"served {requests_served} requests (maxRequestsPerWorker {self.max_requests})"
        if self.max_rss_mb > 0 and rss_bytes is not None and rss_bytes > self.max_rss_mb * MIB:
            return f"RSS of {rss_bytes / MIB:.1f} MiB is over maxWorkerRssMb {self.max_rss_mb}"
        return None


def recycle_reason(policy: RecyclePolicy, requests_served: int, pid: int) -> str | None:
    """The policy applied to a live incarnation, measuring its RSS only when a limit needs it."""
    rss = process_rss(pid) if policy.measures_rss else None
    return policy.reason(requests_served, rss)


def process_rss(pid: int) -> int | None:
    """The resident set size of process ``pid`` in bytes (its own, not its children's), or
    None when it cannot be read (the process is gone)."""
    if pid <= 0:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None
