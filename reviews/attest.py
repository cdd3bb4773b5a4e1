"""Attestation: the Single Task Owner says whether a session's (overnight) work is theirs.

``accepted`` — "I accept this work as mine"; ``disowned`` — "this is not my work", with a reason.
Only the session's current STO may attest (not the pod lead, not a manager: it is a personal
statement of ownership). The session's ``attestation``/``attestation_reason`` and the
``session.attested`` audit event are written in one transaction; the tile is re-broadcast after
commit. Attesting again replaces the verdict (both events stay in the log).

Audit event ``session.attested``: actor the STO (user), provenance ``human``, payload
``{"verdict": "accepted"|"disowned", "reason": str, "previous": str, "previous_reason": str}``.
"""

from __future__ import annotations

from typing import cast

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import Truncator

from agents.authority import NotAllowed, sto_named_for
from agents.events import send_on_commit
from agents.models import AgentSession, User
from audit.log import record

VERDICTS = ("accepted", "disowned")
REASON_MAX = cast(int, AgentSession._meta.get_field("attestation_reason").max_length)


def refuse_attest(*, user: User, session: AgentSession) -> str | None:
    """Why ``user`` may not attest ``session`` (None when they may)."""
    if not user.is_authenticated:
        return "You must be logged in."
    if user.pk != session.sto_id:
        return (
            f"Only {sto_named_for(user=user, session=session)} may accept or disown its work: "
            "it is their statement that the work is theirs."
        )
    return None


@transaction.atomic
def session_attest(*, session: AgentSession, by: User, verdict: str, reason: str = "") -> AgentSession:
    """Record the STO's verdict on the session's work. NotAllowed for anyone but the STO;
    ValidationError for an unknown verdict or a disowning without a reason."""
    if verdict not in VERDICTS:
        raise ValidationError({"verdict": f"Unknown verdict {verdict!r}: use accepted or disowned."})
    reason = " ".join((reason or "").split())
    locked = AgentSession.objects.select_for_update().select_related("sto", "pod").get(pk=session.pk)
    refusal = refuse_attest(user=by, session=locked)
    if refusal:
        raise NotAllowed(refusal)
    if verdict == "disowned" and not reason:
        raise ValidationError({"reason": "Say why you disown this work (what is wrong with it, or whose it is)."})
    if len(reason) > REASON_MAX:
        raise ValidationError({"reason": f"Keep the reason under {REASON_MAX} characters."})
    previous, previous_reason = locked.attestation, locked.attestation_reason
    AgentSession.objects.filter(pk=locked.pk).update(
        attestation=verdict,
        attestation_reason=reason,
        version=F("version") + 1,
        updated_at=timezone.now(),
    )
    locked.refresh_from_db(fields=["attestation", "attestation_reason", "version", "updated_at"])
    record(
        "session.attested",
        session=locked,
        user=by,
        provenance="human",
        payload={
            "verdict": verdict,
            "reason": reason,
            "previous": previous,
            "previous_reason": Truncator(previous_reason).chars(200),
        },
    )
    send_on_commit(locked.pk, locked.pod_id)
    return locked
