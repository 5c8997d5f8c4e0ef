"""erasure domain."""
