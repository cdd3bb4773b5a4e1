"""Hot reads of the agent step, compiled once per process instead of once per call.

Django compiles a queryset to SQL on every evaluation; for the step's small per-tool-call reads
(a join and three subqueries) that compilation costs ~2 ms, twenty times the query itself. A
``PreparedValues`` builds its ``values_list()`` queryset once per database alias with a sentinel
primary key, keeps the SQL, and afterwards only swaps the key in. Only for querysets whose other
parameters are constants (no times, no user input).
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import connections
from django.db.models import QuerySet

SENTINEL = -7_000_000_007


class PreparedValues:
    def __init__(self, build: Callable[[int], QuerySet]) -> None:
        self.build = build
        self._compiled: dict[str, tuple[str, list, list[int]]] = {}

    def _compile(self, alias: str) -> tuple[str, list, list[int]]:
        sql, params = self.build(SENTINEL).using(alias).query.sql_with_params()
        slots = [i for i, value in enumerate(params) if value == SENTINEL]
        if not slots:
            raise ValueError("a prepared query must filter on its key")
        compiled = self._compiled[alias] = (sql, list(params), slots)
        return compiled

    def first(self, key: int, *, using: str = "default") -> tuple | None:
        sql, params, slots = self._compiled.get(using) or self._compile(using)
        params = list(params)
        for slot in slots:
            params[slot] = key
        with connections[using].cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
