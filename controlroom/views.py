from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def canvas(request: HttpRequest) -> HttpResponse:
    return HttpResponse("canvas")


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({})
