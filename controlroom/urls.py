from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from agents import views as agent_views
from controlroom import views
from controlroom.health import healthz

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("", views.canvas, name="canvas"),
    path("pods/", agent_views.pods, name="pods"),
    path("pods/<slug:slug>/", agent_views.pod_detail, name="pod_detail"),
    path("pods/<slug:slug>/members", agent_views.pod_membership, name="pod_membership"),
    path("sessions/<int:session_id>/", agent_views.session_drawer, name="session_drawer"),
    path("sessions/<int:session_id>/sto", agent_views.session_assign_sto, name="session_assign_sto"),
    path("sessions/<int:session_id>/<str:action>", agent_views.session_control, name="session_control"),
]
