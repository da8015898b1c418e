"""Sinks: forward scans from a journal cursor to the world and ack what the far side accepted.

Each sink owns one connection, reconnects with backoff on its own and never blocks polling or
another sink: whatever it could not deliver stays behind its cursor (shared/architecture.md).
"""
