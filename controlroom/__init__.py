"""Control Room: settings, ASGI/websocket wiring, Celery app, and the pages that look across everything."""

from .celery import app as celery_app

__all__ = ["celery_app"]
