"""Workflows (contract §2.7): DAG pipelines of models and handler functions.

``spec`` and ``dag`` are sans-IO (the spec YAML to values, the graph checked); ``archive`` reads
a ``.war``; ``executor`` runs one request through the graph; ``registry`` holds the registered
workflows; ``archiver`` writes ``.war`` files. The API functions live in ``trioserve.api``.
"""
