"""pgrunbook: backups, restores and runbooks for a PostgreSQL (Supabase) database."""

__version__ = "0.1.0"
