"""Compaction: the exact tier of an erasure (a retraining without every erased sample that
starts a new lineage), the per-model erasure policy that asks for it, and a lineage's health."""
