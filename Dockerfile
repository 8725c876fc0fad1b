FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY celery_durable ./celery_durable
COPY examples ./examples
RUN pip install --no-cache-dir '.[postgres]'
USER nobody
