"""Metrics (contract §3): the families behind ``/metrics`` (prometheus-client collectors with
TorchServe's exact names), the metrics YAML, the system sampler and the log-mode lines.

- ``spec.py``: the metrics YAML (``metrics_config``; the default ships as ``metrics.yaml``).
- ``families.py``: one family's series and its prometheus-client form.
- ``registry.py``: ``ServerMetrics`` (one per server) and ``VersionMetrics`` (its hooks for one
  model version).
- ``system.py``: the psutil / NVML sampler task.
- ``logfmt.py``: TorchServe's metric log lines, for ``metrics_mode=log``.
"""
