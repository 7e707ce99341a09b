"""The HTTP edge: request limits and context (`middleware.py`), CORS (`cors.py`), ETags and JSON
answers (`resources.py`), idempotent POSTs (`idempotency.py`), the OpenAPI document (`openapi.py`),
health checks (`health.py`), and the Cloud Functions adapter (`function.py`)."""
