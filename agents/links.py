"""Signed decision links: one escalation, one person, good once, for a while.

The "needs you" webhook and the queue carry a link to a page sized for a phone. The link is a
``django.core.signing`` token (salted, timestamped) naming the escalation, the person it was made
for and the escalation's nonce (``Escalation.link_nonce``). Opening it still needs that person's
login and authority; deciding through it uses it (``Escalation.link_used_at``), so a link that
leaked from a chat cannot be replayed. Expiry: ``CONTROLROOM["DECISION_LINK_MAX_AGE_S"]``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.urls import reverse

SALT = "controlroom.decision-link"


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class LinkClaim:
    escalation_id: int
    user_id: int
    nonce: str


class LinkInvalid(Exception):
    """The token was tampered with or is not a decision link."""


class LinkExpired(Exception):
    """The token is genuine but older than DECISION_LINK_MAX_AGE_S."""


def make_token(*, escalation_id: int, user_id: int, nonce: str) -> str:
    return signing.dumps({"e": escalation_id, "u": user_id, "n": nonce}, salt=SALT)


def read_token(token: str) -> LinkClaim:
    try:
        data = signing.loads(token, salt=SALT, max_age=settings.CONTROLROOM["DECISION_LINK_MAX_AGE_S"])
    except signing.SignatureExpired:
        raise LinkExpired from None
    except signing.BadSignature:
        raise LinkInvalid from None
    try:
        return LinkClaim(escalation_id=int(data["e"]), user_id=int(data["u"]), nonce=str(data["n"]))
    except (KeyError, TypeError, ValueError):
        raise LinkInvalid from None


def link_path(*, escalation_id: int, user_id: int, nonce: str) -> str:
    return reverse("decision_link", args=[make_token(escalation_id=escalation_id, user_id=user_id, nonce=nonce)])


def absolute(path: str) -> str:
    """An absolute link when the deployment says where it lives (CONTROLROOM["PUBLIC_URL"])."""
    return (settings.CONTROLROOM.get("PUBLIC_URL") or "").rstrip("/") + path
