"""Websocket routes (wrapped in controlroom/asgi.py by the origin check and the session auth)."""

from django.urls import path

from controlroom.consumers import CanvasConsumer

websocket_urlpatterns: list = [
    path("ws/canvas/", CanvasConsumer.as_asgi(), name="ws_canvas"),
]
