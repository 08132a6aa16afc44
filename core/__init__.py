"""The domain model every package may import: statuses, ids, time, settings, task options.

``core`` imports no other package of the project (tests/test_layers.py checks it), so the
protocol (``bus``), the store, the runner and the gateway all build on it without cycles.
"""
