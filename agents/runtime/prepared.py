"""Hot reads of the agent step, compiled once per process instead of once per call.

Django compiles a queryset to SQL on every evaluation; for the step's small per-tool-call reads
(a join and three subqueries) that compilation costs ~2 ms, twenty times the query itself. A
``PreparedValues`` builds its ``values_list()`` queryset once per database alias with a sentinel
primary key, keeps the SQL, and afterwards only swaps the key in. Only for querysets whose other
parameters are constants (no times, no user input).

``PreparedGet`` does the same for a model instance with its ``select_related`` objects: the SQL,
the column converters and the related populators are worked out once, the way Django's own model
iterable does on every evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators

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


class _CompiledGet:
    def __init__(self, queryset: QuerySet, alias: str) -> None:
        compiler = queryset.query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        self.sql, self.params = sql, list(params)
        self.slots = [i for i, value in enumerate(self.params) if value == SENTINEL]
        if not self.slots:
            raise ValueError("a prepared query must filter on its key")
        if compiler.annotation_col_map or compiler.klass_info is None:
            raise ValueError("a prepared get reads one model with its select_related objects, nothing else")
        select, klass_info = compiler.select, compiler.klass_info
        self.model: type[Model] = klass_info["model"]
        fields = klass_info["select_fields"]
        self.start, self.end = fields[0], fields[-1] + 1
        self.init_list = [column[0].target.attname for column in select[self.start : self.end]]
        self.converters = sorted(compiler.get_converters([column[0] for column in select]).items())
        self.populators = get_related_populators(klass_info, select, alias)


class PreparedGet:
    """``build(key)`` is a queryset of one model filtered on the key, with ``select_related`` (and
    ``select_for_update``) as wanted. ``get(key)`` returns the instance, or raises the model's
    ``DoesNotExist``, like ``QuerySet.get``."""

    def __init__(self, build: Callable[[int], QuerySet]) -> None:
        self.build = build
        self._compiled: dict[str, _CompiledGet] = {}

    def get(self, key: int, *, using: str = "default") -> Any:
        compiled = self._compiled.get(using)
        if compiled is None:
            compiled = self._compiled[using] = _CompiledGet(self.build(SENTINEL).using(using), using)
        params = list(compiled.params)
        for slot in compiled.slots:
            params[slot] = key
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            row = cursor.fetchone()
        if row is None:
            raise compiled.model.DoesNotExist(f"{compiled.model.__name__} {key} does not exist")
        if compiled.converters:
            row = list(row)
            for position, (functions, expression) in compiled.converters:
                value = row[position]
                for function in functions:
                    value = function(value, expression, connection)
                row[position] = value
        instance = compiled.model.from_db(using, compiled.init_list, row[compiled.start : compiled.end])
        for populator in compiled.populators:
            populator.populate(row, instance)
        return instance
