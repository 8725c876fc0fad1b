"""Runnable examples: the seed programs of Gaev.DurableTask as celery_durable workflows."""
