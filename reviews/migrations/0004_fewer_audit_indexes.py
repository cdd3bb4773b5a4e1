"""Drop the single-column audit indexes that a composite index already leads with, and the unused one.

Each index costs every append a page write; kind, on_behalf_of_id, session_id and pod_id are the
leading columns of the (x, id) and (x, created_at) indexes, which serve the same lookups; no
query looks events up by actor_user_id.

Only the indexes are dropped (``SeparateDatabaseAndState``): an AlterField would make SQLite
rebuild the table, which drops the append-only triggers with the old table.
"""

from typing import Any

from django.db import migrations, models

COLUMNS = {  # column -> Django's name for its db_index index (the same on SQLite and PostgreSQL)
    "kind": "reviews_auditevent_kind_1ffadc67",
    "on_behalf_of_id": "reviews_auditevent_on_behalf_of_id_0004b1f3",
    "session_id": "reviews_auditevent_session_id_9e49a371",
    "pod_id": "reviews_auditevent_pod_id_31af0a5d",
    "actor_user_id": "reviews_auditevent_actor_user_id_0419ab1a",
}

DROP: list[Any] = [f'DROP INDEX IF EXISTS "{name}"' for name in COLUMNS.values()] + [
    'DROP INDEX IF EXISTS "reviews_auditevent_kind_1ffadc67_like"',  # PostgreSQL's varchar_pattern_ops twin
]
CREATE: list[Any] = [
    f'CREATE INDEX IF NOT EXISTS "{name}" ON "reviews_auditevent" ("{column}")' for column, name in COLUMNS.items()
]


class Migration(migrations.Migration):
    dependencies = [("reviews", "0003_explorer_indexes")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(model_name="auditevent", name="kind", field=models.CharField(max_length=48)),
                migrations.AlterField(
                    model_name="auditevent", name="actor_user_id", field=models.BigIntegerField(blank=True, null=True)
                ),
                migrations.AlterField(
                    model_name="auditevent", name="on_behalf_of_id", field=models.BigIntegerField(blank=True, null=True)
                ),
                migrations.AlterField(
                    model_name="auditevent", name="pod_id", field=models.BigIntegerField(blank=True, null=True)
                ),
                migrations.AlterField(
                    model_name="auditevent", name="session_id", field=models.BigIntegerField(blank=True, null=True)
                ),
            ],
            database_operations=[migrations.RunSQL(sql=DROP, reverse_sql=CREATE)],
        ),
    ]
