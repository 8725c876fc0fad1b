"""Orders: a model, an existing Celery task, and the workflow that places an order."""
