"""The frontend's CPU scheduling class.

A worker's answer wakes the frontend; when the frontend then takes the CPU the worker is on,
the worker loses it in the middle of its turnaround (its next batch is already written to its
socket) and the batch after waits for the frontend to block again: on a machine with fewer
cores than busy processes this cost a `sleep10` worker ~1 ms on one batch in five. Under
``SCHED_BATCH`` (Linux) a woken frontend does not preempt the running task; its share of the
CPU is unchanged (the same nice weight), it just waits for the next scheduling point.

Workers keep the policy the frontend had: children inherit a policy, so the frontend leaves its
old one in ``WORKER_SCHED_ENV`` and a worker puts itself back under it first thing
(backend/__main__.py).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# The scheduling policy workers run under (the frontend's before it changed its own).
WORKER_SCHED_ENV = "TRIOSERVE_WORKER_SCHED"


def prefer_workers(enabled: bool) -> bool:
    """Put this process under SCHED_BATCH when ``enabled`` and the system has it; returns
    whether it did (never raises: the default policy is a fine fallback)."""
    policy = getattr(os, "SCHED_BATCH", None)
    setter = getattr(os, "sched_setscheduler", None)
    if not enabled or policy is None or setter is None:
        return False
    try:
        before = os.sched_getscheduler(0)
        setter(0, policy, os.sched_param(0))
    except OSError as exc:
        logger.info("frontend_sched_batch: SCHED_BATCH not available (%s)", exc)
        return False
    os.environ[WORKER_SCHED_ENV] = str(before)
    return True
