"""The canvas websocket, driven through the real ASGI stack (origin check, session auth, routing)
and the real Redis channel layer from settings."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.utils import timezone

from agents import services
from agents.events import pod_group, session_update_payload
from agents.models import AgentSession, PodMembership
from controlroom import consumers
from controlroom.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

VERSION = re.compile(r'id="tile-(\d+)"[^>]*data-version="(\d+)"')


def run(scenario):
    """Run an async scenario from a sync test (DB calls of the consumer run on this thread)."""
    return async_to_sync(scenario)()


def _headers(client, user, *, origin: bytes = b"http://testserver") -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", origin), (b"host", b"testserver")]
    if user is not None:
        client.force_login(user)
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    return headers


def _socket(headers) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, "/ws/canvas/", headers=headers)


async def _connected(headers) -> WebsocketCommunicator:
    communicator = _socket(headers)
    connected, code = await communicator.connect(timeout=5)
    assert connected, code
    return communicator


async def _subscribe(communicator, pods, since=None, **extra) -> list[dict]:
    """Subscribe and return the control frames up to and including "subscribed"."""
    await communicator.send_to(text_data=json.dumps({"type": "subscribe", "pods": pods, "since": since, **extra}))
    frames = []
    while True:
        frame = json.loads(await communicator.receive_from(timeout=5))
        frames.append(frame)
        if frame["type"] == "subscribed":
            return frames


async def _frames(communicator, *, quiet: float = 1.0, limit: float = 20.0) -> list[str]:
    """Every frame until none came for ``quiet`` seconds."""
    frames: list[str] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await communicator.receive_nothing(timeout=quiet):
            break
        frames.append(await communicator.receive_from(timeout=1))
    return frames


def _versions(frame: str) -> dict[int, int]:
    return {int(s): int(v) for s, v in VERSION.findall(frame)}


def _launch(fleet, *, pod, sto, name):
    return services.session_launch(pod=pod, sto=sto, goal=name, by=fleet.manager, repository=fleet.repo, start=False)


@pytest.fixture
def sessions(fleet):
    return {
        "a1": _launch(fleet, pod=fleet.alpha, sto=fleet.sto, name="a1"),
        "a2": _launch(fleet, pod=fleet.alpha, sto=fleet.member, name="a2"),
        "a3": _launch(fleet, pod=fleet.alpha, sto=fleet.sto, name="a3"),
        "b1": _launch(fleet, pod=fleet.bravo, sto=fleet.outsider, name="b1"),
    }


pause = database_sync_to_async(services.session_pause)


# --- connecting ----------------------------------------------------------------------------------


def test_an_anonymous_visitor_is_refused_with_4401(client, fleet):
    headers = _headers(client, None)

    async def scenario():
        communicator = _socket(headers)
        assert await communicator.connect(timeout=5) == (False, 4401)

    run(scenario)


def test_a_page_from_another_origin_is_refused_even_when_logged_in(client, fleet):
    headers = _headers(client, fleet.manager, origin=b"http://evil.example")

    async def scenario():
        communicator = _socket(headers)
        connected, _ = await communicator.connect(timeout=5)
        assert not connected

    run(scenario)


@pytest.mark.parametrize(
    "origin",
    [
        b"http://testserver:8001",  # another port of the same host
        b"https://testserver",  # another scheme
        b"http://testserver.evil.example",
        b"null",
        b"ftp://testserver",
    ],
)
def test_a_page_on_another_port_or_scheme_of_the_same_host_is_refused(client, fleet, origin):
    headers = _headers(client, fleet.manager, origin=origin)

    async def scenario():
        communicator = _socket(headers)
        connected, _ = await communicator.connect(timeout=5)
        assert not connected

    run(scenario)


def test_a_loopback_page_on_another_port_is_refused_and_the_sites_own_port_is_not(client, fleet):
    client.force_login(fleet.manager)
    cookie = (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())

    async def scenario():
        own = [(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000"), cookie]
        communicator = _socket(own)
        assert (await communicator.connect(timeout=5))[0]
        await communicator.disconnect()
        other = [(b"origin", b"http://127.0.0.1:8001"), (b"host", b"127.0.0.1:8000"), cookie]
        assert not (await _socket(other).connect(timeout=5))[0]
        no_origin = [(b"host", b"127.0.0.1:8000"), cookie]
        assert not (await _socket(no_origin).connect(timeout=5))[0]

    run(scenario)


def test_a_trusted_origin_of_a_tls_proxy_is_accepted(client, fleet, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://cr.example.org"]
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "cr.example.org"]
    client.force_login(fleet.manager)
    cookie = (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())

    async def scenario():
        ok = _socket([(b"origin", b"https://cr.example.org"), (b"host", b"cr.example.org"), cookie])
        assert (await ok.connect(timeout=5))[0]
        await ok.disconnect()
        other_port = _socket([(b"origin", b"https://cr.example.org:8443"), (b"host", b"cr.example.org"), cookie])
        assert not (await other_port.connect(timeout=5))[0]

    run(scenario)


# --- the login session ----------------------------------------------------------------------------


async def _closed(communicator, *, timeout: float) -> tuple[list[dict], int]:
    """Frames received until the server closes the socket, and the close code."""
    frames = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = await communicator.receive_output(timeout=max(0.1, deadline - time.monotonic()))
        if output["type"] == "websocket.close":
            return frames, output.get("code")
        frames.append(json.loads(output["text"]) if output.get("text", "").startswith("{") else output)
    raise AssertionError(f"still open after {timeout}s: {frames}")


def test_the_socket_closes_within_seconds_of_logout(client, fleet, sessions, monkeypatch):
    monkeypatch.setattr(consumers, "SESSION_CHECK_EVERY_S", 0.5)
    headers = _headers(client, fleet.member)

    async def scenario():
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk])
        await database_sync_to_async(client.logout)()
        frames, code = await _closed(communicator, timeout=5)
        assert code == consumers.CLOSE_UNAUTHENTICATED
        assert frames and frames[-1]["type"] == "error" and "logged out" in frames[-1]["error"]

    run(scenario)


def test_after_logout_no_tile_is_streamed(client, fleet, sessions, monkeypatch):
    monkeypatch.setattr(consumers, "SESSION_CHECK_EVERY_S", 3600.0)  # only the subscribe check runs
    headers = _headers(client, fleet.member)

    async def scenario():
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk])
        await database_sync_to_async(client.logout)()
        await communicator.send_to(text_data=json.dumps({"type": "subscribe", "pods": [fleet.alpha.pk]}))
        frames, code = await _closed(communicator, timeout=5)
        assert code == consumers.CLOSE_UNAUTHENTICATED
        assert all(f.get("type") == "error" for f in frames), frames

    run(scenario)


def test_a_password_change_elsewhere_or_deactivation_ends_the_socket(client, fleet, sessions, monkeypatch):
    monkeypatch.setattr(consumers, "SESSION_CHECK_EVERY_S", 0.5)
    headers = _headers(client, fleet.member)

    def change_password():
        fleet.member.set_password("a-new-long-passphrase-1")
        fleet.member.save()

    async def scenario():
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk])
        await database_sync_to_async(change_password)()
        _, code = await _closed(communicator, timeout=5)
        assert code == consumers.CLOSE_UNAUTHENTICATED

    run(scenario)


def test_a_logged_in_socket_stays_open_across_session_checks(client, fleet, sessions, monkeypatch):
    monkeypatch.setattr(consumers, "SESSION_CHECK_EVERY_S", 0.2)
    headers = _headers(client, fleet.member)

    async def scenario():
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk])
        assert await communicator.receive_nothing(timeout=1.0)  # several checks passed
        await pause(session=sessions["a1"], by=fleet.sto)
        assert sessions["a1"].pk in _versions(await communicator.receive_from(timeout=5))
        await communicator.disconnect()

    run(scenario)


def test_a_logged_in_user_connects_and_gets_an_answer_to_ping(client, fleet):
    headers = _headers(client, fleet.member)

    async def scenario():
        communicator = await _connected(headers)
        await communicator.send_to(text_data='{"type": "ping"}')
        assert json.loads(await communicator.receive_from(timeout=5)) == {"type": "pong"}
        await communicator.disconnect()

    run(scenario)


# --- who hears what -------------------------------------------------------------------------------


def test_a_member_of_alpha_may_not_watch_bravo_and_hears_nothing_when_bravo_changes(client, fleet, sessions):
    headers = _headers(client, fleet.member)

    async def scenario():
        communicator = await _connected(headers)
        frames = await _subscribe(communicator, [fleet.alpha.pk, fleet.bravo.pk])
        assert frames[0]["type"] == "error" and frames[0]["pods"] == [fleet.bravo.pk]
        assert frames[-1] == {"type": "subscribed", "pods": [fleet.alpha.pk]}
        await pause(session=sessions["b1"], by=fleet.outsider)  # a real change, broadcast after commit
        assert await communicator.receive_nothing(timeout=1.0)
        await pause(session=sessions["a1"], by=fleet.sto)  # their own pod still comes through
        frame = await communicator.receive_from(timeout=5)
        assert list(_versions(frame)) == [sessions["a1"].pk]
        assert 'data-status="paused"' in frame and 'hx-swap-oob="true"' in frame
        await communicator.disconnect()

    run(scenario)


def test_a_refused_subscription_joins_no_group(client, fleet, sessions):
    headers = _headers(client, fleet.member)

    async def scenario():
        communicator = await _connected(headers)
        frames = await _subscribe(communicator, [fleet.bravo.pk, 987654])
        assert frames[0] == {
            "type": "error",
            "error": "not allowed: you cannot watch these pods",
            "pods": [fleet.bravo.pk, 987654],
        }
        assert frames[-1] == {"type": "subscribed", "pods": []}
        payload = await database_sync_to_async(session_update_payload)(sessions["b1"])
        await get_channel_layer().group_send(pod_group(fleet.bravo.pk), payload)
        assert await communicator.receive_nothing(timeout=1.0)
        await communicator.disconnect()

    run(scenario)


def test_the_manager_hears_every_pod_they_watch(client, fleet, sessions):
    headers = _headers(client, fleet.manager)

    async def scenario():
        communicator = await _connected(headers)
        assert (await _subscribe(communicator, [fleet.alpha.pk, fleet.bravo.pk]))[-1]["pods"] == sorted(
            [fleet.alpha.pk, fleet.bravo.pk]
        )
        await pause(session=sessions["b1"], by=fleet.manager)
        assert list(_versions(await communicator.receive_from(timeout=5))) == [sessions["b1"].pk]
        await communicator.disconnect()

    run(scenario)


def test_a_member_removed_from_the_pod_stops_hearing_it(client, fleet, sessions, monkeypatch):
    headers = _headers(client, fleet.member)
    monkeypatch.setattr(consumers, "REAUTHORIZE_EVERY_S", 0.0)

    async def scenario():
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk])
        await database_sync_to_async(PodMembership.objects.filter(user=fleet.member, pod=fleet.alpha).delete)()
        await pause(session=sessions["a1"], by=fleet.sto)
        frame = json.loads(await communicator.receive_from(timeout=5))
        assert frame["type"] == "error" and frame["pods"] == [fleet.alpha.pk]
        assert await communicator.receive_nothing(timeout=1.0)
        await communicator.disconnect()

    run(scenario)


# --- coalescing -----------------------------------------------------------------------------------


def test_a_burst_of_a_thousand_updates_costs_a_few_frames_and_ends_on_the_last_version(client, fleet, sessions):
    headers = _headers(client, fleet.manager)
    session = sessions["a1"]
    base = session_update_payload(session)
    first = session.version + 1

    async def scenario():
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk])
        layer = get_channel_layer()
        sent_at = time.monotonic()
        for version in range(first, first + 1000):
            html = base["html"].replace(f'data-version="{session.version}"', f'data-version="{version}"')
            await layer.group_send(
                pod_group(fleet.alpha.pk), {**base, "version": version, "html": html, "ts": time.time()}
            )
        opening = await communicator.receive_from(timeout=5)
        frames = [opening, *await _frames(communicator)]
        return time.monotonic() - sent_at, frames  # from the first update to the quiet after the last frame

    elapsed, frames = run(scenario)
    versions = [_versions(f)[session.pk] for f in frames]
    assert versions[0] == first, "the first update of a tile goes out at once"
    assert versions[-1] == first + 999, "the tile ends on its latest version"
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    window = django_settings.CONTROLROOM["LIVE_COALESCE_MS"] / 1000
    assert len(frames) <= 2 + elapsed / window, f"{len(frames)} frames in {elapsed:.2f}s: {versions}"
    assert len(frames) < 30
    assert all('id="live-ts"' in f for f in frames)


def test_tiles_changing_together_share_a_frame_and_frames_are_spaced(client, fleet, sessions, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "LIVE_FRAME_MS": 300}
    headers = _headers(client, fleet.manager)

    async def scenario():
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk])
        payloads = [await database_sync_to_async(session_update_payload)(sessions[key]) for key in ("a1", "a2", "a3")]
        for payload in payloads:
            await get_channel_layer().group_send(
                pod_group(fleet.alpha.pk), {**payload, "version": payload["version"] + 1}
            )
        first = await communicator.receive_from(timeout=5)
        at_first = time.monotonic()
        second = await communicator.receive_from(timeout=5)
        gap = time.monotonic() - at_first
        quiet = await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()
        return first, second, gap, quiet

    first, second, gap, quiet = run(scenario)
    assert list(_versions(first)) == [sessions["a1"].pk], "the first change goes out at once"
    assert set(_versions(second)) == {sessions["a2"].pk, sessions["a3"].pk}, "the next two share one frame"
    assert gap >= 0.25 and quiet


def test_updates_of_different_tiles_are_not_held_back_by_each_other(client, fleet, sessions):
    headers = _headers(client, fleet.manager)

    async def scenario():
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk])
        started = time.monotonic()
        for key in ("a1", "a2", "a3"):
            payload = await database_sync_to_async(session_update_payload)(sessions[key])
            await get_channel_layer().group_send(
                pod_group(fleet.alpha.pk), {**payload, "version": payload["version"] + 1}
            )
        seen = {}
        while len(seen) < 3:
            seen.update(_versions(await communicator.receive_from(timeout=5)))
        assert time.monotonic() - started < 1.0
        await communicator.disconnect()

    run(scenario)


# --- catch-up -------------------------------------------------------------------------------------


def test_a_reconnecting_browser_catches_up_on_what_changed_while_it_was_away(client, fleet, sessions):
    headers = _headers(client, fleet.manager)
    AgentSession.objects.filter(pk=sessions["a3"].pk).update(updated_at=timezone.now() - timedelta(hours=2))

    async def scenario():
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk])
        await pause(session=sessions["a1"], by=fleet.manager)
        frame = await communicator.receive_from(timeout=5)
        seen_ts = float(re.search(r'id="live-ts" hidden data-ts="([\d.]+)"', frame)[1])
        await communicator.disconnect()

        # while away: a2 is paused, a1 resumed (and nobody hears the broadcasts)
        await pause(session=sessions["a2"], by=fleet.manager)
        await database_sync_to_async(services.session_resume)(session=sessions["a1"], by=fleet.manager)

        again = await _connected(headers)
        await _subscribe(again, [fleet.alpha.pk], since=seen_ts)
        caught = {}
        for frame in await _frames(again):
            caught.update(_versions(frame))
        await again.disconnect()
        return caught

    caught = run(scenario)
    current = dict(AgentSession.objects.filter(pod=fleet.alpha).values_list("pk", "version"))
    assert caught[sessions["a2"].pk] == current[sessions["a2"].pk]
    assert caught[sessions["a1"].pk] == current[sessions["a1"].pk]
    assert sessions["a3"].pk not in caught, "an unchanged session is not sent again"


def test_catch_up_only_covers_pods_the_user_may_see(client, fleet, sessions):
    headers = _headers(client, fleet.member)

    async def scenario():
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk, fleet.bravo.pk], since=time.time() - 3600)
        caught = {}
        for frame in await _frames(communicator):
            caught.update(_versions(frame))
        await communicator.disconnect()
        return caught

    caught = run(scenario)
    assert set(caught) == {sessions["a1"].pk, sessions["a2"].pk, sessions["a3"].pk}


def test_catch_up_sends_tonights_work_unless_the_page_shows_older_sessions(client, fleet, sessions):
    headers = _headers(client, fleet.manager)
    four_days_ago = timezone.now() - timedelta(days=4)
    AgentSession.objects.filter(pk=sessions["a3"].pk).update(
        status="cancelled", updated_at=four_days_ago, finished_at=four_days_ago
    )

    async def caught_up(**extra):
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk], since=time.time() - 5 * 86400, **extra)
        caught = {}
        for frame in await _frames(communicator):
            caught.update(_versions(frame))
        await communicator.disconnect()
        return caught

    async def tonight_only():
        return await caught_up()

    async def with_older():
        return await caught_up(older=True)

    assert set(run(tonight_only)) == {sessions["a1"].pk, sessions["a2"].pk}
    assert set(run(with_older)) == {sessions["a1"].pk, sessions["a2"].pk, sessions["a3"].pk}


# --- bad input ------------------------------------------------------------------------------------

BAD_FRAMES = {
    "not json": "this is not json",
    "a list": "[1, 2, 3]",
    "unknown type": '{"type": "drop_tables"}',
    "no type": '{"pods": [1]}',
    "pods not a list": '{"type": "subscribe", "pods": "1,2"}',
    "pods of strings": '{"type": "subscribe", "pods": ["1"]}',
    "pods of booleans": '{"type": "subscribe", "pods": [true]}',
    "since a word": '{"type": "subscribe", "pods": [], "since": "yesterday"}',
    "since not a number": '{"type": "subscribe", "pods": [], "since": NaN}',
    "too many pods": json.dumps({"type": "subscribe", "pods": list(range(600))}),
    "huge": json.dumps({"type": "subscribe", "pods": [], "pad": "x" * 40_000}),
    "very huge": "x" * 2_000_000,
    "since far in the future": '{"type": "subscribe", "pods": [], "since": 1e20}',
    "since huge integer": '{"type": "subscribe", "pods": [1], "since": 100000000000000000000000000000}',
    "since infinite": '{"type": "subscribe", "pods": [], "since": 1e400}',
    "since negative": '{"type": "subscribe", "pods": [], "since": -1e20}',
    "pod id beyond the database": '{"type": "subscribe", "pods": [100000000000000000000000000000]}',
    "pod id negative": '{"type": "subscribe", "pods": [-1]}',
    "pod id zero": '{"type": "subscribe", "pods": [0]}',
    "pods of floats": '{"type": "subscribe", "pods": [1.5]}',
    "deeply nested": "[" * 10_000 + "]" * 10_000,
    "nul and unicode digits": '{"type": "subscribe\u0000", "pods": ["\u00b2"]}',
    "type not a string": '{"type": {"a": 1}}',
    "older not a boolean": '{"type": "subscribe", "pods": [], "older": "yes"}',
}


def test_malformed_frames_get_an_error_frame_and_the_socket_keeps_working(client, fleet, sessions):
    headers = _headers(client, fleet.manager)

    async def scenario():
        communicator = await _connected(headers)
        for name, text in BAD_FRAMES.items():
            await communicator.send_to(text_data=text)
            frame = json.loads(await communicator.receive_from(timeout=5))
            assert frame["type"] == "error", (name, frame)
            assert "internal" not in frame["error"], (name, frame)
        await communicator.send_to(bytes_data=b"\x00\x01")
        assert json.loads(await communicator.receive_from(timeout=5))["type"] == "error"
        # still alive and still useful
        assert (await _subscribe(communicator, [fleet.alpha.pk]))[-1]["pods"] == [fleet.alpha.pk]
        await pause(session=sessions["a1"], by=fleet.manager)
        assert sessions["a1"].pk in _versions(await communicator.receive_from(timeout=5))
        await communicator.disconnect()

    run(scenario)


def test_an_unknown_message_on_the_channel_layer_is_ignored(client, fleet, sessions):
    headers = _headers(client, fleet.manager)

    async def scenario():
        communicator = await _connected(headers)
        await _subscribe(communicator, [fleet.alpha.pk])
        layer = get_channel_layer()
        await layer.group_send(pod_group(fleet.alpha.pk), {"type": "pod.something_new", "x": 1})
        await layer.group_send(pod_group(fleet.alpha.pk), {"type": "session.update", "session_id": "nope"})
        await pause(session=sessions["a1"], by=fleet.manager)
        assert sessions["a1"].pk in _versions(await communicator.receive_from(timeout=5))
        await communicator.disconnect()

    run(scenario)
