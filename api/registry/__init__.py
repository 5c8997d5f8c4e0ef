"""registry domain."""
