"""The database: one pool of asyncpg connections per process (`database.py`, `pool.py`, through the
Cloud SQL connector in `cloud_sql.py`), SQLAlchemy Core statements compiled once (`statements.py`),
CRUD by id (`crud.py`), keyset pages (`pagination.py`), and what a failure means (`failures.py`)."""
