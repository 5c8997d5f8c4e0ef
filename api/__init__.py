"""Lethe HTTP API (FastAPI). Arrives with the service issue; the package exists so the distribution layout is final."""
