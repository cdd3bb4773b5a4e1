import os

from django.apps import AppConfig

_registered = False


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Any forked child (Celery's prefork pool, the audit log's parallel verification) starts
        # without the parent's database connections and pools: their sockets stay the parent's.
        global _registered
        if not _registered:
            from audit.chain import _forget_inherited_connections

            os.register_at_fork(after_in_child=_forget_inherited_connections)
            _registered = True
