"""The audit log is append-only at the database level.

Triggers refuse UPDATE and DELETE on reviews_auditevent and reviews_checkpoint (SQLite and
PostgreSQL), and TRUNCATE on PostgreSQL. Whoever can drop triggers can still tamper: that is what
the hash chains and the signed checkpoints detect (docs/AUDIT.md); the triggers stop ordinary
code paths (an ORM ``.update()``, an admin action, a stray script) from rewriting history.

Migration ``reviews/0002_audit_append_only`` installs them (the tables were created under the
``reviews`` app and keep its names). ``install(connection)`` / ``uninstall(connection)`` are also
for tests that must empty the tables with a flush. The SQL (trigger and function names included)
is what that migration has always run: change it only with a new migration.
"""

from __future__ import annotations

TABLES = ("reviews_auditevent", "reviews_checkpoint")
MESSAGE = "audit log is append-only"
PG_FUNCTION = "reviews_audit_append_only"


def _sqlite_install() -> list[str]:
    statements = []
    for table in TABLES:
        for op in ("UPDATE", "DELETE"):
            statements.append(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
            )
    return statements


def _sqlite_uninstall() -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {table}_no_{op}" for table in TABLES for op in ("update", "delete")]


def _pg_install() -> list[str]:
    statements = [
        f"""
        CREATE OR REPLACE FUNCTION {PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '{MESSAGE}: % on % refused', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'integrity_constraint_violation';
        END
        $$
        """
    ]
    for table in TABLES:
        statements += [
            f"DROP TRIGGER IF EXISTS {table}_no_update_delete ON {table}",
            f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {PG_FUNCTION}()",
            f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_FUNCTION}()",
        ]
    return statements


def _pg_uninstall() -> list[str]:
    statements = []
    for table in TABLES:
        statements += [
            f"DROP TRIGGER IF EXISTS {table}_no_update_delete ON {table}",
            f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
        ]
    return statements + [f"DROP FUNCTION IF EXISTS {PG_FUNCTION}()"]


def _statements(vendor: str, *, install_them: bool) -> list[str]:
    if vendor == "sqlite":
        return _sqlite_install() if install_them else _sqlite_uninstall()
    if vendor == "postgresql":
        return _pg_install() if install_them else _pg_uninstall()
    raise NotImplementedError(f"append-only triggers for the audit log: unsupported database {vendor!r}")


def install(connection) -> None:
    with connection.cursor() as cursor:
        for sql in _statements(connection.vendor, install_them=True):
            cursor.execute(sql)


def uninstall(connection) -> None:
    with connection.cursor() as cursor:
        for sql in _statements(connection.vendor, install_them=False):
            cursor.execute(sql)
