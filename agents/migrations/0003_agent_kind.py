from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0002_fleet_hosts"),
    ]

    operations = [
        migrations.AddField(
            model_name="agentsession",
            name="agent_kind",
            field=models.CharField(
                choices=[("builtin", "Built-in loop"), ("claude-code", "Claude Code"), ("codex", "Codex")],
                default="builtin",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="agentsession",
            name="agent_ref",
            field=models.CharField(
                blank=True,
                help_text="The external agent's own session id (resumed after a human's decision).",
                max_length=120,
            ),
        ),
        migrations.AddField(
            model_name="agentsession",
            name="model_calls",
            field=models.PositiveIntegerField(
                default=0, help_text="Model calls of a supervised agent (its budget of steps counts these)."
            ),
        ),
    ]
