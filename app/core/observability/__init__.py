"""What the service tells its operators: structured log lines with the request's trace and ids
(`logs.py`) and the audit trail of every write, written after its commit (`audit.py`)."""
