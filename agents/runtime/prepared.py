"""Hot reads of the agent step, compiled once per process instead of once per call.

Django compiles a queryset to SQL on every evaluation; for the step's small per-tool-call reads
(a join and three subqueries) that compilation costs ~2 ms, twenty times the query itself. A
``PreparedValues`` builds its ``values_list()`` queryset once per database alias with a sentinel
primary key, keeps the SQL, and afterwards only swaps the key in. Only for querysets whose other
parameters are constants (no times, no user input).

``PreparedGet`` does the same for a model instance with its ``select_related`` objects: the SQL,
the column converters and the related populators are worked out once, the way Django's own model
iterable does on every evaluation. ``PreparedUpdate`` compiles a one-table ``UPDATE`` of a fixed
shape (the step's claim, its budget reservation, its token counters) with typed sentinel values and
afterwards only puts the real values, converted as the ORM converts them, in their places.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

from django.db import connections, models, transaction
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators  # type: ignore[attr-defined]  # (not in the stubs)
from django.db.models.sql import UpdateQuery

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
            raise cast(Any, compiled.model).DoesNotExist(f"{compiled.model.__name__} {key} does not exist")
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


_TYPES = (int, str, datetime, Decimal)


def _sentinel(kind: type, index: int, variant: int = 0) -> Any:
    """A stand-in value for compiling. Small and positive, because Django answers a lookup outside
    an integer field's range (a negative one on a positive field) with no SQL at all; two variants,
    because a slot is where the two compilations differ, so a constant that happens to equal a
    stand-in is never taken for one."""
    number = 20_001 + 2 * index + variant
    if kind is int:
        return number
    if kind is str:
        return f"\x00prepared-sentinel-{number}"
    if kind is datetime:
        return datetime(1901 + variant, 1, 1, 0, 0, 0, index + 1, tzinfo=UTC)
    if kind is Decimal:
        return Decimal(number)
    raise TypeError(f"a prepared update takes {', '.join(t.__name__ for t in _TYPES)} values, not {kind}")


_DATETIME: models.DateTimeField = models.DateTimeField()


def _adapt(kind: type, value: Any, connection) -> Any:
    """The value as the ORM hands it to the database driver for a field or expression of ``kind``."""
    if value is None:
        raise ValueError("a prepared update's values cannot be None (the statement's shape would change)")
    if kind is datetime:
        return _DATETIME.get_db_prep_value(value, connection)
    if kind is Decimal:
        return Decimal(value)
    return kind(value)


def _compile_update(build: Callable, types: dict[str, type], alias: str, variant: int) -> tuple[str, list, dict]:
    sentinels = {name: _sentinel(kind, index, variant) for index, (name, kind) in enumerate(types.items())}
    queryset, changes = build(SimpleNamespace(**sentinels))
    query = queryset.using(alias).query.chain(UpdateQuery)
    query.add_update_values(changes)
    query.get_initial_alias()
    if query.related_updates or query.count_active_tables() != 1:
        # (the ORM would first select the keys: not one statement)
        raise ValueError("a prepared update changes one table, filtered on its own columns")
    sql, params = query.get_compiler(using=alias).as_sql()
    return sql, list(params), sentinels


class _CompiledUpdate:
    def __init__(self, build: Callable, types: dict[str, type], alias: str) -> None:
        connection = connections[alias]
        self.sql, self.params, first = _compile_update(build, types, alias, 0)
        sql, other_params, second = _compile_update(build, types, alias, 1)
        if sql != self.sql or len(other_params) != len(self.params):
            raise ValueError("a prepared update's statement must not depend on its values")
        # (position, name, type, the driver's wrapper the ORM put around it: psycopg's Int4 on PostgreSQL)
        self.slots: list[tuple[int, str, type, type | None]] = []
        for name, kind in types.items():
            one, two = _adapt(kind, first[name], connection), _adapt(kind, second[name], connection)
            found = [
                i
                for i, (a, b) in enumerate(zip(self.params, other_params, strict=True))
                if a != b and isinstance(a, type(one)) and a == one and b == two
            ]
            if not found:
                raise ValueError(f"the prepared update does not use its value {name!r}")
            for i in found:
                wrapper = type(self.params[i])
                self.slots.append((i, name, kind, None if wrapper is type(one) else wrapper))
        if len(self.slots) != sum(a != b for a, b in zip(self.params, other_params, strict=True)):
            raise ValueError("a prepared update's statement has values it cannot place")


class PreparedUpdate:
    """``build(v)`` returns ``(queryset, changes)`` for ``queryset.update(**changes)``, written with
    the attributes of ``v`` wherever a value varies; ``types`` names them and their types (int, str,
    datetime, Decimal). ``run(**values)`` executes it with the real values and returns the number of
    rows changed, like ``update()``. Constants (status lists, ``F()`` expressions) stay in ``build``;
    a value that can be None is a different statement (another ``PreparedUpdate``)."""

    def __init__(self, build: Callable[[SimpleNamespace], tuple[QuerySet, dict]], **types: type) -> None:
        self.build, self.types = build, types
        for kind in types.values():
            _sentinel(kind, 0)  # refuses an unsupported type at once
        self._compiled: dict[str, _CompiledUpdate] = {}

    def run(self, *, using: str = "default", **values: Any) -> int:
        if values.keys() != self.types.keys():
            raise TypeError(f"a prepared update needs exactly {sorted(self.types)}, got {sorted(values)}")
        compiled = self._compiled.get(using)
        if compiled is None:
            compiled = self._compiled[using] = _CompiledUpdate(self.build, self.types, using)
        connection = connections[using]
        params = list(compiled.params)
        for position, name, kind, wrapper in compiled.slots:
            value = _adapt(kind, values[name], connection)
            params[position] = value if wrapper is None else wrapper(value)
        with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            return cursor.rowcount
