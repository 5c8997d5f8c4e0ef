"""Errors that carry a one-line message meant for the person who caused them.

The CLI prints ``str(error)`` of any :class:`LetheError` and exits non-zero; the API turns
them into 4xx JSON. Anything else escaping is a bug, not user input.
"""


class LetheError(Exception):
    """Base of all user-facing errors: bad input, missing runs, corrupt blobs."""


class DatasetError(LetheError):
    """A dataset could not be found, parsed or validated (wrong magic, truncated, bad labels)."""


class ModelError(LetheError):
    """An unknown model name or an architecture that cannot fit the dataset."""


class BlobStoreError(LetheError):
    """The blob store failed in a way the caller should report."""


class BlobStoreUnavailableError(BlobStoreError):
    """The blob store could not be reached (connection refused, timeout, 5xx after retries):
    a transient fault, worth retrying later, unlike a missing or corrupt blob."""


class BlobNotFoundError(BlobStoreError):
    """No blob is stored under the requested key."""


class BlobIntegrityError(BlobStoreError):
    """A blob's bytes do not match the sha256 recorded when it was written."""


class RunError(LetheError):
    """A training run is missing, incomplete, or was recorded in a way the request cannot use."""


class ForgetSetError(LetheError):
    """The forget set is empty or names samples, classes or subjects the run never saw."""


class MethodError(LetheError):
    """An unknown unlearning method, or an artifact trained for another method."""
