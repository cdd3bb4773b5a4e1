from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from agents import views as agent_views
from controlroom import dashboard_views, views
from controlroom.health import healthz

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("", views.canvas, name="canvas"),
    path("canvas/side", views.canvas_side, name="canvas_side"),
    path("decisions", views.decisions, name="decisions"),
    path("decisions/group", views.decisions_group, name="decisions_group"),
    path("launch", views.launch, name="launch"),
    path("launch/batch", views.launch_batch, name="launch_batch"),
    path("dashboard", dashboard_views.dashboard, name="dashboard"),
    path("reviews/", include("reviews.urls")),
    path("", include("reviews.audit_urls")),  # /digest, /timeline, /audit/...
    path("pods/", agent_views.pods, name="pods"),
    path("pods/<slug:slug>/", agent_views.pod_detail, name="pod_detail"),
    path("pods/<slug:slug>/members", agent_views.pod_membership, name="pod_membership"),
    path("pods/<slug:slug>/pause", agent_views.pod_control, {"action": "pause"}, name="pod_pause"),
    path("pods/<slug:slug>/resume", agent_views.pod_control, {"action": "resume"}, name="pod_resume"),
    path("sessions/<int:session_id>/", agent_views.session_drawer, name="session_drawer"),
    path("sessions/<int:session_id>/sto", agent_views.session_assign_sto, name="session_assign_sto"),
    path("sessions/<int:session_id>/transcript", agent_views.session_transcript, name="session_transcript"),
    path("sessions/<int:session_id>/audit", agent_views.session_audit, name="session_audit"),
    path("sessions/<int:session_id>/grant/issue", agent_views.session_grant_issue, name="session_grant_issue"),
    path("sessions/<int:session_id>/grant/validate", agent_views.session_grant_validate, name="session_grant_validate"),
    path("sessions/<int:session_id>/grant/revoke", agent_views.session_grant_revoke, name="session_grant_revoke"),
    path("sessions/<int:session_id>/priority", agent_views.session_priority, name="session_priority"),
    path("sessions/<int:session_id>/steer", agent_views.session_steer, name="session_steer"),
    path("d/<str:token>", agent_views.decision_link, name="decision_link"),
    path("escalations/<int:escalation_id>/decide", agent_views.escalation_decide, name="escalation_decide"),
    # the catch-all for controls (pause/resume/cancel) stays last among the session URLs
    path("sessions/<int:session_id>/<str:action>", agent_views.session_control, name="session_control"),
]
