"""The fleet's invariants hold at the database level, on SQLite and on PostgreSQL."""

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction

from agents.models import AgentSession

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def _insert_session(*, pod_id, sto_id, repository_id):
    table = AgentSession._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (pod_id, sto_id, repository_id, name, goal, success_criteria, task_type, priority,"
            " base_branch, branch, base_commit, worktree_path, worker_host, pushed_commit, pushed_call_id, agent_kind, agent_ref, model, api_base, api_key_env, fallback_models, seed,"
            " status, status_reason, current_activity, steps, iteration, iteration_started_step, tool_calls, model_calls, tokens_in,"
            " tokens_out, cost_usd, cost_unknown_calls, lease_owner, enqueued_at, version, hold, idle_steps, tags, handoff, summary,"
            " review_state, attestation, attestation_reason, created_at, updated_at)"
            " VALUES (%s, %s, %s, 'x', 'g', '', 'fix', 2, 'main', '', '', '', '', '', NULL, 'builtin', '', 'sim/engineer', '', '', '[]', 0,"
            " 'queued', '', '', 0, 1, 0, 0, 0, 0, 0, 0, 0, '', NULL, 1, '', 0, '[]', '{}', '', 'none', '', '', %s, %s)",
            [pod_id, sto_id, repository_id, "2026-01-01 00:00:00+00:00", "2026-01-01 00:00:00+00:00"],
        )


def test_a_session_row_with_every_column_inserts(fleet):
    _insert_session(pod_id=fleet.alpha.pk, sto_id=fleet.sto.pk, repository_id=fleet.repo.pk)
    assert AgentSession.objects.filter(pod=fleet.alpha, sto=fleet.sto).count() == 1


def test_a_session_without_a_single_task_owner_is_refused_by_the_database(fleet):
    with pytest.raises(IntegrityError), transaction.atomic():
        _insert_session(pod_id=fleet.alpha.pk, sto_id=None, repository_id=fleet.repo.pk)


def test_a_session_without_a_pod_is_refused_by_the_database(fleet):
    with pytest.raises(IntegrityError), transaction.atomic():
        _insert_session(pod_id=None, sto_id=fleet.sto.pk, repository_id=fleet.repo.pk)


def test_migrations_match_the_models():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
