# Steering messages (a person's message to a running agent) and single-use decision links.

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0003_agent_kind"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="escalation",
            name="link_nonce",
            field=models.CharField(
                blank=True,
                help_text="The nonce inside the signed decision links of this escalation (agents/links.py): "
                "a link is good once, so deciding through one uses it.",
                max_length=64,
            ),
        ),
        migrations.AddField(
            model_name="escalation",
            name="link_used_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="SteeringMessage",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("text", models.TextField()),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("delivered_at", models.DateTimeField(blank=True, null=True)),
                ("delivered_step", models.PositiveIntegerField(blank=True, null=True)),
                (
                    "author",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="+", to=settings.AUTH_USER_MODEL
                    ),
                ),
                (
                    "session",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="steering", to="agents.agentsession"
                    ),
                ),
                (
                    "transcript_entry",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="agents.transcriptentry",
                    ),
                ),
            ],
            options={
                "ordering": ["session", "created_at", "pk"],
                "indexes": [models.Index(fields=["session", "delivered_at"], name="agents_stee_session_eea9b6_idx")],
            },
        ),
    ]
