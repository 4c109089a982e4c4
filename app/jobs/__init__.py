"""Jobs: the store (SQLite rows with an owner, a kind, a status) and what each kind of job is."""

from app.jobs.store import FINISHED, SCHEMA, STATUSES, JobStore, brief, new_token

__all__ = ["FINISHED", "SCHEMA", "STATUSES", "JobStore", "brief", "new_token"]
