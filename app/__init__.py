"""Projects and tasks: a FastAPI service for Cloud Functions on Cloud SQL for PostgreSQL."""
