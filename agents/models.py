"""The fleet: people, pods, repositories, agent sessions, delegated grants, escalations.

No business logic lives here (see services.py); models only describe state and its
database-level invariants (an agent session without a pod or an STO cannot exist).
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import Q
from django.utils import timezone


class User(AbstractUser):
    class Role(models.TextChoices):
        MANAGER = "manager", "Manager"
        MEMBER = "member", "Member"
        LEADER = "leader", "Leader"

    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    @property
    def is_manager(self) -> bool:
        return self.role == self.Role.MANAGER

    @property
    def is_leader(self) -> bool:
        return self.role == self.Role.LEADER

    @property
    def label(self) -> str:
        return self.get_full_name() or self.username


class Pod(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    paused = models.BooleanField(default=False, help_text="Pod-wide stop switch.")
    review_wip_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Sessions awaiting review at which new sessions of this pod wait in queued.",
    )
    webhook_url = models.URLField(blank=True, help_text="POSTed (Slack-compatible JSON) when a session needs a human.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class PodMembership(models.Model):
    class Role(models.TextChoices):
        LEAD = "lead", "Lead"
        MEMBER = "member", "Member"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    pod = models.ForeignKey(Pod, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "pod"], name="one_membership_per_user_and_pod")]
        ordering = ["pod", "-role", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.pod} ({self.role})"


class Repository(models.Model):
    name = models.CharField(max_length=120, unique=True)
    path = models.CharField(max_length=500, help_text="Path of a local git repository.")
    remote_url = models.CharField(
        max_length=500,
        blank=True,
        help_text="Where worker hosts with disks of their own (WORKTREE_SOURCE=clone) clone from and push "
        "session branches to (ssh://…, file://…); the path when empty.",
    )
    default_branch = models.CharField(max_length=200, default="main")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "repositories"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class FleetControl(models.Model):
    """A single row: the fleet-wide stop switch."""

    stopped = models.BooleanField(default=False)
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    changed_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)

    @classmethod
    def current(cls) -> FleetControl:
        obj, _ = cls.objects.get_or_create(pk=1)
        return obj


class Status(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    NEEDS_APPROVAL = "needs_approval", "Needs approval"
    BLOCKED = "blocked", "Blocked"
    PAUSED = "paused", "Paused"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATUSES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
NEEDS_HUMAN_STATUSES = frozenset({Status.NEEDS_APPROVAL, Status.BLOCKED})


class TaskType(models.TextChoices):
    FEATURE = "feature", "Feature"
    FIX = "fix", "Fix"
    DOCS = "docs", "Docs"
    TESTS = "tests", "Tests"
    REFACTOR = "refactor", "Refactor"
    CHORE = "chore", "Chore"


class Priority(models.IntegerChoices):
    P0 = 0, "P0"
    P1 = 1, "P1"
    P2 = 2, "P2"
    P3 = 3, "P3"


class AgentKind(models.TextChoices):
    """Which agent works the session: the control room's own loop or a third-party CLI it supervises."""

    BUILTIN = "builtin", "Built-in loop"
    CLAUDE_CODE = "claude-code", "Claude Code"
    CODEX = "codex", "Codex"


class ReviewState(models.TextChoices):
    NONE = "none", "Not reviewed"
    CHANGES_REQUESTED = "changes_requested", "Changes requested"
    APPROVED = "approved", "Approved and merged"
    REJECTED = "rejected", "Rejected"
    REVERTED = "reverted", "Reverted"


class AgentSession(models.Model):
    """One agent working on one goal: one tile on the canvas."""

    pod = models.ForeignKey(Pod, on_delete=models.PROTECT, related_name="sessions")
    sto = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="owned_sessions",
        verbose_name="Single Task Owner",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="launched_sessions", null=True, blank=True
    )
    name = models.CharField(max_length=120)
    goal = models.TextField()
    success_criteria = models.TextField(blank=True)
    task_type = models.CharField(max_length=16, choices=TaskType.choices, default=TaskType.FEATURE)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.P2)

    repository = models.ForeignKey(Repository, on_delete=models.PROTECT, related_name="sessions")
    base_branch = models.CharField(max_length=200)
    branch = models.CharField(max_length=250, blank=True)
    base_commit = models.CharField(max_length=64, blank=True)
    worktree_path = models.CharField(max_length=500, blank=True)
    worker_host = models.CharField(
        max_length=120, blank=True, help_text="The worker host whose disk holds the worktree (its steps go there)."
    )
    pushed_commit = models.CharField(
        max_length=64, blank=True, help_text="The branch's last commit known to be in the central repository."
    )
    pushed_call = models.ForeignKey(
        "ToolCall",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The git_commit call that made pushed_commit: later edits live only in the worktree.",
    )

    agent_kind = models.CharField(max_length=16, choices=AgentKind.choices, default=AgentKind.BUILTIN)
    agent_ref = models.CharField(
        max_length=120, blank=True, help_text="The external agent's own session id (resumed after a human's decision)."
    )
    model = models.CharField(max_length=200)
    api_base = models.URLField(blank=True)
    api_key_env = models.CharField(max_length=100, blank=True, help_text="Name of the env var holding the key.")
    fallback_models = models.JSONField(default=list, blank=True)
    seed = models.IntegerField(default=0)

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    status_reason = models.CharField(max_length=500, blank=True)
    current_activity = models.CharField(max_length=300, blank=True)

    steps = models.PositiveIntegerField(default=0)
    iteration = models.PositiveIntegerField(default=1)
    iteration_started_step = models.PositiveIntegerField(default=0)
    tool_calls = models.PositiveIntegerField(default=0)
    model_calls = models.PositiveIntegerField(
        default=0, help_text="Model calls of a supervised agent (its budget of steps counts these)."
    )
    tokens_in = models.PositiveBigIntegerField(default=0)
    tokens_out = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    cost_unknown_calls = models.PositiveIntegerField(default=0)

    lease_owner = models.CharField(max_length=120, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(
        null=True, blank=True, help_text="When the launch or the housekeeping tick last sent its next step."
    )
    version = models.PositiveBigIntegerField(default=1)

    hold = models.CharField(
        max_length=8,
        blank=True,
        help_text="Which stop switch parked this session: fleet, pod or user (empty when none).",
    )
    idle_steps = models.PositiveSmallIntegerField(default=0)
    tags = models.JSONField(default=list, blank=True)
    handoff = models.JSONField(default=dict, blank=True)
    summary = models.TextField(blank=True)
    review_state = models.CharField(max_length=20, choices=ReviewState.choices, default=ReviewState.NONE)
    attestation = models.CharField(max_length=16, blank=True)  # "", "accepted", "disowned"
    attestation_reason = models.CharField(max_length=500, blank=True)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["pod__name", "priority", "id"]
        indexes = [models.Index(fields=["pod", "status"]), models.Index(fields=["sto", "status"])]
        constraints = [models.CheckConstraint(condition=Q(priority__lte=3), name="priority_p0_to_p3")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    @property
    def priority_label(self) -> str:
        return f"P{self.priority}"


class Grant(models.Model):
    """Delegated authority for one session. Never edited: a change revokes and issues a new version."""

    class Mode(models.TextChoices):
        PLAN = "plan", "Plan (read only)"
        ASK = "ask", "Ask (reads allowed, everything else asks)"
        EDITS = "edits", "Edits (reads and edits allowed)"
        AUTONOMOUS = "autonomous", "Autonomous (allowed unless denied)"

    class OnUnanswered(models.TextChoices):
        WAIT = "wait", "Wait until a human answers"
        DENY = "deny", "Deny at once"

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="grants")
    version = models.PositiveIntegerField(default=1)
    delegator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="delegated_grants")
    issued_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.EDITS)
    allow = models.JSONField(default=list, blank=True)
    ask = models.JSONField(default=list, blank=True)
    deny = models.JSONField(default=list, blank=True)
    max_steps = models.PositiveIntegerField(null=True, blank=True)
    max_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    max_cost_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    max_wall_seconds = models.PositiveIntegerField(null=True, blank=True)
    max_tool_calls = models.PositiveIntegerField(null=True, blank=True)
    not_before = models.DateTimeField()
    expires_at = models.DateTimeField()
    on_unanswered = models.CharField(max_length=8, choices=OnUnanswered.choices, default=OnUnanswered.WAIT)
    justification = models.CharField(max_length=500, blank=True)
    issued_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    revoke_reason = models.CharField(max_length=500, blank=True)
    supersedes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="superseded_by"
    )

    class Meta:
        ordering = ["session", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["session", "version"], name="one_grant_version_per_session"),
            models.CheckConstraint(condition=Q(expires_at__gt=models.F("not_before")), name="grant_window_not_empty"),
        ]

    def __str__(self) -> str:
        return f"grant {self.pk} v{self.version} for session {self.session_id}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class AgentStep(models.Model):
    """One Celery step of one session; (session, number) is unique, so a redelivered step is recognised."""

    class State(models.TextChoices):
        STARTED = "started", "Started"
        MODEL_DONE = "model_done", "Model answered"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="step_records")
    number = models.PositiveIntegerField()
    iteration = models.PositiveIntegerField(default=1)
    state = models.CharField(max_length=16, choices=State.choices, default=State.STARTED)
    worker = models.CharField(max_length=120, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)  # of the model call, counting transient failures
    waits = models.PositiveIntegerField(default=0)  # times it went back on the queue for model capacity / HTTP 429
    response = models.JSONField(null=True, blank=True, help_text="The assistant message the model returned.")
    model = models.CharField(max_length=200, blank=True)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    timings = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "number"]
        constraints = [models.UniqueConstraint(fields=["session", "number"], name="one_step_record_per_number")]


class ToolCall(models.Model):
    """One tool call: the intent is recorded before execution, the result after."""

    class State(models.TextChoices):
        INTENDED = "intended", "Authorized, about to run"
        DONE = "done", "Done"
        ERROR = "error", "Tool error"
        DENIED = "denied", "Denied"
        ESCALATED = "escalated", "Waiting for a human"
        INTERRUPTED = "interrupted", "Interrupted (worker died); not re-run"

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="tool_call_records")
    step = models.ForeignKey(AgentStep, on_delete=models.CASCADE, related_name="tool_calls")
    index = models.PositiveSmallIntegerField()
    call_id = models.CharField(max_length=120)
    name = models.CharField(max_length=80)
    arguments = models.JSONField(null=True, blank=True)
    raw_arguments_hash = models.CharField(max_length=64, blank=True)
    action = models.TextField(blank=True, help_text="Canonical action text that was authorized.")
    action_hash = models.CharField(max_length=64, blank=True, db_index=True)
    decision = models.CharField(max_length=8, blank=True)  # allow / deny / ask
    reason_type = models.CharField(max_length=16, blank=True)
    reason = models.TextField(blank=True)
    rule = models.CharField(max_length=300, blank=True)
    grant = models.ForeignKey(Grant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.INTENDED)
    result = models.TextField(blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "step__number", "index"]
        constraints = [models.UniqueConstraint(fields=["step", "index"], name="one_tool_call_per_step_index")]


class TranscriptEntry(models.Model):
    """A message of the conversation with the model. The full transcript is kept across iterations."""

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="transcript")
    seq = models.PositiveIntegerField()
    iteration = models.PositiveIntegerField(default=1)
    step = models.PositiveIntegerField(default=0)
    role = models.CharField(max_length=16)  # system / user / assistant / tool
    content = models.TextField(blank=True)
    tool_calls = models.JSONField(null=True, blank=True)
    tool_call_id = models.CharField(max_length=120, blank=True)
    name = models.CharField(max_length=80, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["session", "seq"]
        constraints = [models.UniqueConstraint(fields=["session", "seq"], name="one_transcript_entry_per_seq")]

    def as_message(self) -> dict:
        message: dict = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.role == "tool":
            message["tool_call_id"] = self.tool_call_id
            message["name"] = self.name
        return message


class Escalation(models.Model):
    """An action that needs a human: bound to the exact canonical action (its hash)."""

    class State(models.TextChoices):
        OPEN = "open", "Open"
        ALLOWED_ONCE = "allowed_once", "Allowed once"
        ALLOWED_ALWAYS = "allowed_always", "Allowed always"
        DENIED = "denied", "Denied"
        EXPIRED = "expired", "Expired (denied)"

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="escalations")
    grant = models.ForeignKey(Grant, on_delete=models.CASCADE, related_name="escalations")
    tool_call = models.ForeignKey(
        ToolCall, null=True, blank=True, on_delete=models.SET_NULL, related_name="escalations"
    )
    tool = models.CharField(max_length=80)
    action = models.TextField()
    action_hash = models.CharField(max_length=64, db_index=True)
    reason = models.TextField(blank=True)
    rule = models.CharField(max_length=300, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN, db_index=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.CharField(max_length=500, blank=True)
    consumed_at = models.DateTimeField(null=True, blank=True)
    link_nonce = models.CharField(
        max_length=64,
        blank=True,
        help_text="The nonce inside the signed decision links of this escalation (agents/links.py): "
        "a link is good once, so deciding through one uses it.",
    )
    link_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"escalation {self.pk}: {self.action[:60]}"


class SteeringMessage(models.Model):
    """A person's message to a running agent. Stored when sent (and audited); the runner puts it
    into the agent's context, as a user message of its transcript, at the session's next step."""

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="steering")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    delivered_step = models.PositiveIntegerField(null=True, blank=True)
    transcript_entry = models.ForeignKey(
        TranscriptEntry, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["session", "created_at", "pk"]
        indexes = [models.Index(fields=["session", "delivered_at"])]

    def __str__(self) -> str:
        return f"steering {self.pk} for session {self.session_id}"


class WorkerHost(models.Model):
    """A machine running Celery workers with its own WORKTREES_DIR (agents/hosts.py). Its worker
    processes beat every few seconds; one that stops beating for HOST_LOST_AFTER_S is marked lost."""

    class Source(models.TextChoices):
        DIRECT = "direct", "Worktrees of the central repository (a disk shared with it)"
        CLONE = "clone", "Worktrees of the host's own clone; branches pushed to the central repository"

    name = models.CharField(max_length=120, unique=True)
    worktree_source = models.CharField(max_length=8, choices=Source.choices, default=Source.DIRECT)
    worktrees_dir = models.CharField(max_length=500, blank=True)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)
    lost_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
