"""ASGI entry point: HTTP through Django, websockets through Channels (authenticated; origin checked by
scheme, host and port in controlroom/origins.py)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlroom.settings")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from controlroom.origins import SiteOriginValidator  # noqa: E402
from controlroom.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SiteOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
