"""The Celery app. Workers run agent steps; configuration lives in Django settings (CELERY_*)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlroom.settings")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

app = Celery("controlroom")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The apps send tasks through ``celery.current_app`` and define them with ``@shared_task``, so none
# imports this module. Celery's current app is per thread: only the thread that created the app
# has it, every other thread (the ASGI server's worker threads, a test's live server) gets the
# process's default app. Celery's Django fixup makes this app the default only if no default
# exists yet (anything touching ``celery.current_app`` earlier creates an unconfigured one, with
# its amqp:// broker); so say it here, whatever was imported first.
app.set_default()
