"""The audit app takes over AuditEvent, ChainHead and Checkpoint from ``reviews`` (reviews 0005).

State only: the tables were created by reviews 0001 (indexes by 0003/0004, triggers by 0002) and
keep their names (``db_table``), rows and triggers; nothing in the database schema changes. The
models' content types move from ``reviews`` to ``audit`` so that permissions granted on them
(e.g. ``view_auditevent`` in the admin) stay granted.
"""

import django.utils.timezone
from django.db import IntegrityError, migrations, models, router, transaction

MODELS = ("auditevent", "chainhead", "checkpoint")


def _move_content_types(apps, schema_editor, *, old: str, new: str) -> None:
    """As Django's RenameContentType does for a renamed model: a content type that already exists
    under the new label (a stale one) is left for ``remove_stale_contenttypes``."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if not router.allow_migrate_model(db, ContentType):
        return
    for model in MODELS:
        try:
            with transaction.atomic(using=db):
                ContentType.objects.using(db).filter(app_label=old, model=model).update(app_label=new)
        except IntegrityError:
            pass
    ContentType.objects.clear_cache()


def content_types_forwards(apps, schema_editor) -> None:
    _move_content_types(apps, schema_editor, old="reviews", new="audit")


def content_types_backwards(apps, schema_editor) -> None:
    _move_content_types(apps, schema_editor, old="audit", new="reviews")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("reviews", "0005_audit_models_move_to_the_audit_app"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ChainHead",
                    fields=[
                        ("chain", models.CharField(max_length=40, primary_key=True, serialize=False)),
                        ("seq", models.PositiveBigIntegerField(default=0)),
                        ("hash", models.CharField(max_length=64)),
                    ],
                    options={
                        "db_table": "reviews_chainhead",
                    },
                ),
                migrations.CreateModel(
                    name="Checkpoint",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("reason", models.CharField(blank=True, max_length=80)),
                        ("heads", models.JSONField(default=dict)),
                        ("signature", models.CharField(max_length=128)),
                    ],
                    options={
                        "db_table": "reviews_checkpoint",
                        "ordering": ["id"],
                    },
                ),
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("chain", models.CharField(max_length=40)),
                        ("seq", models.PositiveBigIntegerField()),
                        ("created_at", models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                        ("kind", models.CharField(max_length=48)),
                        (
                            "actor_type",
                            models.CharField(
                                choices=[("agent", "Agent"), ("user", "Human"), ("system", "System")], max_length=8
                            ),
                        ),
                        ("actor_user_id", models.BigIntegerField(blank=True, null=True)),
                        ("actor_session_id", models.BigIntegerField(blank=True, null=True)),
                        ("actor_label", models.CharField(blank=True, max_length=150)),
                        ("on_behalf_of_id", models.BigIntegerField(blank=True, null=True)),
                        ("on_behalf_of_label", models.CharField(blank=True, max_length=150)),
                        ("grant_id", models.BigIntegerField(blank=True, null=True)),
                        ("provenance", models.CharField(blank=True, max_length=16)),
                        ("session_id", models.BigIntegerField(blank=True, null=True)),
                        ("pod_id", models.BigIntegerField(blank=True, null=True)),
                        ("payload", models.JSONField(default=dict)),
                        ("prev_hash", models.CharField(max_length=64)),
                        ("hash", models.CharField(max_length=64)),
                    ],
                    options={
                        "db_table": "reviews_auditevent",
                        "ordering": ["id"],
                        "indexes": [
                            models.Index(fields=["session_id", "id"], name="reviews_aud_session_fd95e7_idx"),
                            models.Index(
                                fields=["on_behalf_of_id", "created_at"], name="reviews_aud_on_beha_d34357_idx"
                            ),
                            models.Index(fields=["kind", "created_at"], name="reviews_aud_kind_7e468f_idx"),
                            models.Index(fields=["kind", "id"], name="reviews_aud_kind_392f2c_idx"),
                            models.Index(fields=["on_behalf_of_id", "id"], name="reviews_aud_on_beha_586c81_idx"),
                            models.Index(fields=["pod_id", "id"], name="reviews_aud_pod_id_79e0cc_idx"),
                        ],
                        "constraints": [
                            models.UniqueConstraint(fields=("chain", "seq"), name="gap_free_chain_sequence")
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_forwards, content_types_backwards, elidable=True),
    ]
