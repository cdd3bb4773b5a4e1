"""Login throttling (django-axes): ten wrong passwords in a row lock a username out of /login/ and
/admin/login/, even with the right password, until the cool-off ends or an operator lifts it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.utils import timezone

from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db

LOGIN_URLS = ["/login/", "/admin/login/"]


def _try(client, url, username, password):
    return client.post(url, {"username": username, "password": password})


def _logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def _fail(client, url, username, times, *, before: int = 0):
    """``times`` wrong passwords (after ``before`` earlier ones): the form again with its error,
    and the lockout page (429) from the tenth in a row on."""
    for attempt in range(before + 1, before + times + 1):
        response = _try(client, url, username, "wrong-guess")
        assert response.status_code == (429 if attempt >= 10 else 200), (attempt, response.status_code)


@pytest.fixture
def staff_manager(fleet):
    fleet.manager.is_staff = True
    fleet.manager.save(update_fields=["is_staff"])
    return fleet.manager


@pytest.mark.parametrize("url", LOGIN_URLS)
def test_the_eleventh_try_is_refused_even_with_the_right_password(client, staff_manager, url):
    _fail(client, url, staff_manager.username, 10)
    response = _try(client, url, staff_manager.username, PASSWORD)
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content
    assert not _logged_in(client)


def test_nine_failures_then_the_right_password_logs_in_and_the_count_starts_again(client, fleet):
    _fail(client, "/login/", fleet.sto.username, 9)
    assert _try(client, "/login/", fleet.sto.username, PASSWORD).status_code == 302
    assert _logged_in(client)
    client.logout()
    _fail(client, "/login/", fleet.sto.username, 9)  # a success forgot the first nine
    assert _try(client, "/login/", fleet.sto.username, PASSWORD).status_code == 302


def test_a_locked_out_username_does_not_lock_out_another(client, fleet):
    _fail(client, "/login/", fleet.sto.username, 10)
    assert _try(client, "/login/", fleet.sto.username, PASSWORD).status_code == 429
    assert _try(client, "/login/", fleet.member.username, PASSWORD).status_code == 302


def test_failures_on_the_admin_login_count_for_the_site_login(client, staff_manager):
    _fail(client, "/admin/login/", staff_manager.username, 5)
    _fail(client, "/login/", staff_manager.username, 5, before=5)
    assert _try(client, "/login/", staff_manager.username, PASSWORD).status_code == 429


def test_axes_reset_lifts_the_lockout(client, fleet):
    _fail(client, "/login/", fleet.sto.username, 10)
    assert _try(client, "/login/", fleet.sto.username, PASSWORD).status_code == 429
    call_command("axes_reset")
    assert _try(client, "/login/", fleet.sto.username, PASSWORD).status_code == 302
    assert _logged_in(client)


def test_the_lockout_ends_after_the_cool_off(client, fleet, settings):
    _fail(client, "/login/", fleet.sto.username, 10)
    assert _try(client, "/login/", fleet.sto.username, PASSWORD).status_code == 429
    # the cool-off has passed: the attempts are older than it
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert _try(client, "/login/", fleet.sto.username, PASSWORD).status_code == 302


def test_the_limits_come_from_the_environment(monkeypatch):
    import subprocess
    import sys

    code = "from django.conf import settings; print(settings.AXES_FAILURE_LIMIT, settings.AXES_COOLOFF_TIME)"
    env = {"LOGIN_FAILURE_LIMIT": "5", "LOGIN_LOCKOUT_MINUTES": "2", "DJANGO_SETTINGS_MODULE": "controlroom.settings"}
    import os

    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.split() == ["5", "0:02:00"], out.stderr
