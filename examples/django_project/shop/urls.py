"""The shop's pages (the console is mounted beside Django in asgi.py)."""

from django.urls import path
from orders.views import order_status

urlpatterns = [path("orders/<int:order_id>/", order_status)]
