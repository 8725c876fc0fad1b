"""Glue for frameworks around Celery (imported only by projects that use them)."""
