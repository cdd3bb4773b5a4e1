"""Pages and actions about pods and single sessions. Views only call selectors and services."""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from agents import authority, selectors, services
from agents.models import AgentSession, Pod, PodMembership, User


def _error_text(exc: ValidationError) -> str:
    if hasattr(exc, "message_dict"):
        return "; ".join(" ".join(msgs) for msgs in exc.message_dict.values())
    return " ".join(exc.messages)


def _visible_session_or_404(request: HttpRequest, session_id: int) -> AgentSession:
    session = selectors.session_visible_to(user=request.user, session_id=session_id)
    if session is None:
        if AgentSession.objects.filter(pk=session_id).exists():
            raise PermissionError
        raise Http404("No such session")
    return session


@require_GET
def pods(request: HttpRequest) -> HttpResponse:
    visible = selectors.pods_visible_to(user=request.user).prefetch_related("memberships__user")
    return render(request, "agents/pods.html", {"pods": visible})


@require_GET
def pod_detail(request: HttpRequest, slug: str) -> HttpResponse:
    pod = get_object_or_404(Pod, slug=slug)
    if not selectors.pods_visible_to(user=request.user).filter(pk=pod.pk).exists():
        return HttpResponseForbidden("You are not a member of this pod.")
    memberships = list(pod.memberships.select_related("user").order_by("-role", "user__username"))
    sessions = list(pod.sessions.select_related("sto").order_by("priority", "-created_at"))
    owned = {m.user_id: [s for s in sessions if s.sto_id == m.user_id] for m in memberships}
    can_admin = authority.refuse_pod_admin(user=request.user, pod_id=pod.pk) is None
    candidates = User.objects.exclude(pk__in=[m.user_id for m in memberships]).order_by("username") if can_admin else []
    return render(request, "agents/pod.html", {
        "pod": pod, "rows": [(m, owned[m.user_id]) for m in memberships], "sessions": sessions,
        "members": [m.user for m in memberships], "can_admin": can_admin, "candidates": candidates,
        "roles": PodMembership.Role.choices,
    })


@require_POST
def session_assign_sto(request: HttpRequest, session_id: int) -> HttpResponse:
    try:
        session = _visible_session_or_404(request, session_id)
    except PermissionError:
        return HttpResponseForbidden("You cannot see this session.")
    new_sto = User.objects.filter(username=request.POST.get("sto", "")).first()
    if new_sto is None:
        messages.error(request, "Choose the new Single Task Owner.")
    else:
        try:
            services.sto_assign(session=session, new_sto=new_sto, by=request.user)
            messages.success(request, f"#{session.pk} is now owned by {new_sto.username}.")
        except authority.NotAllowed as exc:
            services.record_refused_action(session=session, by=request.user, action="assign STO", refusal=str(exc))
            messages.error(request, str(exc))
            return redirect_back(request, session.pod.slug, status=403)
        except ValidationError as exc:
            messages.error(request, _error_text(exc))
    return redirect_back(request, session.pod.slug)


def redirect_back(request: HttpRequest, slug: str, status: int = 302) -> HttpResponse:
    target = request.POST.get("next") or f"/pods/{slug}/"
    if not target.startswith("/") or target.startswith("//"):
        target = f"/pods/{slug}/"
    if status == 403:
        response = render(request, "agents/refused.html", {"back": target}, status=403)
        return response
    return redirect(target)


@require_POST
def pod_membership(request: HttpRequest, slug: str) -> HttpResponse:
    pod = get_object_or_404(Pod, slug=slug)
    user = User.objects.filter(username=request.POST.get("username", "")).first()
    action = request.POST.get("action", "set")
    try:
        if user is None:
            raise ValidationError("Choose a user.")
        if action == "remove":
            services.membership_remove(pod=pod, user=user, by=request.user)
            messages.success(request, f"{user.username} left {pod.name}.")
        else:
            services.membership_set(pod=pod, user=user, role=request.POST.get("role", "member"), by=request.user)
            messages.success(request, f"{user.username} is now {request.POST.get('role', 'member')} of {pod.name}.")
    except authority.NotAllowed as exc:
        messages.error(request, str(exc))
        return redirect_back(request, pod.slug, status=403)
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    return redirect(f"/pods/{pod.slug}/")


@require_GET
def session_drawer(request: HttpRequest, session_id: int) -> HttpResponse:
    try:
        session = _visible_session_or_404(request, session_id)
    except PermissionError:
        return HttpResponseForbidden("You cannot see this session: it belongs to another pod.")
    context = {
        "s": session,
        "grant": selectors.active_grant(session=session),
        "escalations": selectors.open_escalations(session=session),
        "can_act": authority.refuse_session_control(user=request.user, session=session) is None,
    }
    template = "agents/drawer.html#drawer" if request.htmx else "agents/drawer_page.html"
    return render(request, template, context)


CONTROLS = {
    "pause": services.session_pause,
    "resume": services.session_resume,
    "cancel": services.session_cancel,
}


@require_POST
def session_control(request: HttpRequest, session_id: int, action: str) -> HttpResponse:
    try:
        session = _visible_session_or_404(request, session_id)
    except PermissionError:
        return HttpResponseForbidden("You cannot see this session: it belongs to another pod.")
    service = CONTROLS.get(action)
    if service is None:
        raise Http404("Unknown control")
    try:
        service(session=session, by=request.user)
    except authority.NotAllowed as exc:
        services.record_refused_action(session=session, by=request.user, action=action, refusal=str(exc))
        return HttpResponseForbidden(str(exc))
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    if request.htmx:
        return session_drawer(_as_get(request), session_id)
    return redirect("session_drawer", session_id=session_id)


def _as_get(request: HttpRequest) -> HttpRequest:
    request.method = "GET"
    return request
