"""The audit log, the ground floor: events, chain heads, signed checkpoints, ``record()``, the
chains' verification and export, the checkpoint task and the audit commands.

It imports only Django and the standard library (a test enforces it): every other app writes
through ``audit.log.record`` and nothing here knows what agents, reviews or pages are.
"""
