from django.http import HttpRequest, JsonResponse

from orders.models import Order


def order_status(request: HttpRequest, order_id: int) -> JsonResponse:
    order = Order.objects.get(pk=order_id)
    return JsonResponse({"id": order.id, "status": order.status, "confirmed": order.confirmed})
