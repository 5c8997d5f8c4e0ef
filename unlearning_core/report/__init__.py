"""Per-version erasure reports: Grad-CAM grid, accuracy timeline, metrics, evidence.

Pure library code: the caller (CLI or service) hands in plain data (request ids, audit
position, metrics) and gets a self-contained HTML page (and a PDF of it) back.
"""
