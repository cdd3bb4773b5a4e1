"""The overnight record (included at the root of controlroom/urls.py):

/digest                       the morning digest (?preset=, ?since=&until=, ?scope=all)
/digest/attest/<id>           POST: the STO accepts or disowns a session's work
/timeline                     the night at a glance (swimlanes)
/audit/                       the audit explorer (filters, keyset pagination ?before=<id>)
/audit/mine                   "Did I do this work?": actions on the viewer's delegated authority
/audit/event/<id>             one event: payload, hash, chain position
/audit/commit/<sha>           who is behind an agent's commit
"""

from django.urls import path

from reviews import audit_views

urlpatterns = [
    path("digest", audit_views.digest_page, name="digest"),
    path("digest/attest/<int:session_id>", audit_views.digest_attest, name="digest_attest"),
    path("timeline", audit_views.timeline_page, name="timeline"),
    path("audit/", audit_views.audit_explorer, name="audit_explorer"),
    path("audit/mine", audit_views.audit_mine, name="audit_mine"),
    path("audit/event/<int:event_id>", audit_views.audit_event, name="audit_event"),
    path("audit/commit/<str:sha>", audit_views.audit_commit, name="audit_commit"),
]
