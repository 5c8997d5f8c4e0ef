"""Lethe workers (Celery). Arrives with the worker issue; the package exists so the distribution layout is final."""
