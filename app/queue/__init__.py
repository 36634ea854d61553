"""The ingestion queue of the cluster profile: Celery on a broker (RabbitMQ or Redis)."""
