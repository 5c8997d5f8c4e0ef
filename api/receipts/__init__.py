"""Signed erasure receipts: the document a data subject's controller files for a request
(``GET /requests/{id}/receipt``) and the public key that verifies it (``GET /receipt-key``)."""
