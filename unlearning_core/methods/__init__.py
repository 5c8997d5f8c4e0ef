"""Unlearning methods."""
