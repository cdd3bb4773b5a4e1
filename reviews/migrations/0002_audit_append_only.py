"""The audit log is append-only at the database level: this migration installs the triggers of
audit/triggers.py (see there) on reviews_auditevent and reviews_checkpoint, the tables that
reviews 0001 created (their models now live in the ``audit`` app, under the same table names).
"""

from django.db import migrations

from audit.triggers import install, uninstall


def forwards(apps, schema_editor) -> None:
    install(schema_editor.connection)


def backwards(apps, schema_editor) -> None:
    uninstall(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [
        ("reviews", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards, elidable=False),
    ]
