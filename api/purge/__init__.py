"""Purge: deleting, after their grace period, the blobs that still hold erased data and
that nothing needs any more."""
