"""The audit models moved from ``reviews`` to ``audit`` without touching the database: a database
built at the previous layout's head (reviews 0004, the models still in ``reviews``) migrates
forward with its events, its triggers still refuse to rewrite history, and the log still verifies.
"""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from agents.models import User
from audit.chain import checkpoint_create
from audit.log import record
from audit.models import AuditEvent, ChainHead, Checkpoint
from tests.audit.test_audit_chain import Sess, _raw, _refused, json_param

# The leaf nodes of the layout before the audit app existed.
OLD_HEAD = [("agents", "0001_initial"), ("reviews", "0004_fewer_audit_indexes")]


def migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return MigrationExecutor(connection)  # a fresh loader sees what is applied now


def latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def trigger_names() -> set[str]:
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        else:
            cursor.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        return {name for (name,) in cursor.fetchall() if name.startswith("reviews_")}


def verify() -> str:
    out = io.StringIO()
    call_command("audit_verify", workers=1, stdout=out)  # exits 1 (SystemExit) on a broken log
    return out.getvalue()


@pytest.fixture
def old_layout_database():
    """The database as the previous layout built it: reviews migrated from zero to 0004 (tables,
    indexes, triggers by the migrations of that time), the audit app unknown to the migrations,
    content types and permissions of the audit models under ``reviews``."""
    migrate([("reviews", None)])  # drops the audit tables and their triggers with the whole app
    with connection.cursor() as cursor:
        assert "reviews_auditevent" not in connection.introspection.table_names(cursor)
    migrate([("agents", "0001_initial")])  # later agents migrations back first: one direction per plan
    executor = migrate(OLD_HEAD)
    applied = executor.loader.applied_migrations
    assert ("reviews", "0004_fewer_audit_indexes") in applied
    assert ("reviews", "0005_audit_models_move_to_the_audit_app") not in applied
    assert not any(app == "audit" for app, _ in applied)
    old_apps = executor.loader.project_state(OLD_HEAD).apps
    assert old_apps.get_model("reviews", "AuditEvent")._meta.db_table == "reviews_auditevent"
    with pytest.raises(LookupError):
        old_apps.get_app_config("audit")
    ContentType.objects.filter(app_label="audit").delete()  # none left: unapplying audit 0001 moved them back
    ContentType.objects.clear_cache()
    for model in ("auditevent", "chainhead", "checkpoint"):
        ContentType.objects.get_or_create(app_label="reviews", model=model)
    yield
    migrate(latest())  # whatever happened, leave the database at the latest migrations


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_database_of_the_old_layout_migrates_forward_with_its_log_triggers_and_permissions(old_layout_database):
    before = trigger_names()
    if connection.vendor == "sqlite":
        assert before == {f"reviews_{t}_no_{op}" for t in ("auditevent", "checkpoint") for op in ("update", "delete")}
    else:
        assert before == {
            f"reviews_{t}_no_{op}" for t in ("auditevent", "checkpoint") for op in ("update_delete", "truncate")
        }
    # The log written at the old layout, as the running code of that time wrote it (same tables).
    with transaction.atomic():
        for i in range(3):
            record("tool.call", session=Sess(1), agent=True, on_behalf_of=7, grant=3, payload={"i": i})
        record("fleet.stop", payload={"reason": "night"})
    checkpoint_create(reason="before the move")
    auditor = User.objects.create_user("auditor", password="x", is_staff=True)
    view_events, _ = Permission.objects.get_or_create(
        codename="view_auditevent",
        content_type=ContentType.objects.get(app_label="reviews", model="auditevent"),
        defaults={"name": "Can view audit event"},
    )
    auditor.user_permissions.add(view_events)

    migrate(latest())

    applied = MigrationExecutor(connection).loader.applied_migrations
    assert ("audit", "0001_initial") in applied
    assert ("reviews", "0005_audit_models_move_to_the_audit_app") in applied
    assert trigger_names() == before  # nothing rebuilt a table (SQLite would have lost them)
    assert AuditEvent.objects.count() == 4 and Checkpoint.objects.count() == 1
    assert ChainHead.objects.get(chain="s:1").seq == 3
    # The log goes on where it stopped, and still verifies.
    with transaction.atomic():
        assert record("tool.call", session=Sess(1), agent=True, payload={"i": 3}).seq == 4
    checkpoint_create(reason="after the move")
    assert verify().startswith("OK 5 events in 2 chains, 2 checkpoints")
    # The triggers still refuse to rewrite history.
    event = AuditEvent.objects.order_by("id").first()
    checkpoint = Checkpoint.objects.first()
    _refused(lambda: AuditEvent.objects.filter(pk=event.pk).update(kind="edited"))
    _refused(lambda: AuditEvent.objects.filter(pk=event.pk).delete())
    _refused(
        lambda: _raw(
            "UPDATE reviews_auditevent SET payload = " + json_param() + " WHERE id = %s", ['{"x":1}', event.pk]
        )
    )
    _refused(lambda: _raw("DELETE FROM reviews_auditevent", []))
    _refused(lambda: Checkpoint.objects.filter(pk=checkpoint.pk).update(reason="edited"))
    _refused(lambda: _raw("DELETE FROM reviews_checkpoint", []))
    if connection.vendor == "postgresql":
        _refused(lambda: _raw("TRUNCATE reviews_auditevent", []))
        _refused(lambda: _raw("TRUNCATE reviews_checkpoint", []))
    assert AuditEvent.objects.count() == 5 and AuditEvent.objects.get(pk=event.pk).kind == "tool.call"
    # The models' content types moved with them: a permission granted before still holds.
    ContentType.objects.clear_cache()
    assert ContentType.objects.get_for_model(AuditEvent).app_label == "audit"
    assert not ContentType.objects.filter(app_label="reviews", model="auditevent").exists()
    assert User.objects.get(pk=auditor.pk).has_perm("audit.view_auditevent")
    assert verify().startswith("OK 5 events in 2 chains, 2 checkpoints")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_move_migrates_back_to_the_old_layout_and_forward_again(old_layout_database):
    """Reversible: unapplying audit 0001 and reviews 0005 gives the old state back (content types
    under ``reviews``), with the rows and triggers untouched."""
    with transaction.atomic():
        record("fleet.stop", payload={})
    migrate(latest())
    triggers = trigger_names()
    migrate(OLD_HEAD)
    assert ContentType.objects.filter(app_label="reviews", model="auditevent").exists()
    assert not ContentType.objects.filter(app_label="audit").exists()
    assert trigger_names() == triggers
    migrate(latest())
    assert AuditEvent.objects.count() == 1
    assert verify().startswith("OK 1 events in 1 chains, 0 checkpoints")
