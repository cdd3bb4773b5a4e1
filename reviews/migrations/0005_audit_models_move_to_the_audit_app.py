"""AuditEvent, ChainHead and Checkpoint now belong to the ``audit`` app (audit 0001 takes them over).

State only (``SeparateDatabaseAndState`` with no database operation): the tables keep their names
(``reviews_auditevent``, ``reviews_chainhead``, ``reviews_checkpoint``, set as ``db_table`` on the
moved models), their rows, indexes and the append-only triggers of 0002. Dropping or recreating
them would lose the log, and on SQLite rebuilding a table drops its triggers.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("reviews", "0004_fewer_audit_indexes")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="AuditEvent"),
                migrations.DeleteModel(name="ChainHead"),
                migrations.DeleteModel(name="Checkpoint"),
            ],
            database_operations=[],
        ),
    ]
