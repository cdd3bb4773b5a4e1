"""Login throttling: django-axes' backend, for logins that come with a web request.

``AxesStandaloneBackend`` refuses an ``authenticate()`` call made without a request; such calls come
from server-side code (the test client's ``login()``, a shell), not from a visitor guessing passwords,
so this backend lets them through to the model backend. Every login through ``/login/`` and
``/admin/login/`` passes its request and is counted and throttled.
"""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend


class LoginThrottleBackend(AxesStandaloneBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
