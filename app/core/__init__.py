"""The platform: what every resource reuses and no resource needs to edit.

Read it by room:
- `db/`: connections (the pool, the Cloud SQL connector), statements compiled once, CRUD by id,
  keyset pages, and what a database failure means.
- `web/`: the HTTP edge: request limits and context, CORS, ETags and JSON answers, idempotent
  POSTs, the OpenAPI document, the routers' routes on the app, health checks, and the Cloud
  Functions adapter.
- `identity/`: who is calling: ID-token verification and the allow-list.
- `observability/`: structured logs and the audit trail.
- `settings.py` (every setting, validated at start-up), `errors.py` (the typed errors and their
  problem documents), `models.py` (the audited columns and input rules every resource's models
  share), `once.py` (a coroutine run once per process).
"""
