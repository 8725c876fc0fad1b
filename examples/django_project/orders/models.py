from django.db import models


class Order(models.Model):
    """An order; its status is what the workflow moves forward."""

    item = models.CharField(max_length=100)
    status = models.CharField(max_length=20, default="new")
    confirmed = models.BooleanField(default=False)
