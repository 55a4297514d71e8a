"""The registry's version tables: every version of every model, and each model's route history
(migration 2 of `registry.py`)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    source TEXT NOT NULL,
    revision TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    task TEXT NOT NULL,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'deprecated', 'archived')),
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS routes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    route TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS routes_by_model ON routes (model, id)
"""
