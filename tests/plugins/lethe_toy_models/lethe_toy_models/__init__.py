"""A user's own model package (not part of Lethe)."""
