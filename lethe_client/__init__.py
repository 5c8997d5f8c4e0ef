"""A Python client of the Lethe service (built on ``httpx``).

```python
from lethe_client import Client

with Client("http://127.0.0.1:8000", api_key="lethe_...") as lethe:   # or LETHE_URL / LETHE_API_KEY
    filed = lethe.request_erasure("subject-0007")
    status = lethe.wait(filed.id, "approximate", timeout=600)
    weights = lethe.pull("demo-digits")            # cached; 304 when unchanged
```

:class:`AsyncClient` has the same methods, awaited. Every error is a :class:`LetheError`
(``status_code``, ``detail``); see :mod:`lethe_client.errors`.
"""

from lethe_client._core import Retry
from lethe_client._version import __version__
from lethe_client.client import AsyncClient, Client
from lethe_client.errors import (
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    IntegrityError,
    LetheError,
    NotFound,
    PayloadTooLarge,
    ReceiptInvalid,
    RequestFailed,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from lethe_client.models import (
    Accepted,
    Job,
    JobVersion,
    ModelInfo,
    ModelSummary,
    PulledWeights,
    ReceiptKey,
    Report,
    RequestStatus,
    SignedReceipt,
    Tier,
    Version,
)

__all__ = [
    "Accepted",
    "AsyncClient",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "Gone",
    "IntegrityError",
    "Job",
    "JobVersion",
    "LetheError",
    "ModelInfo",
    "ModelSummary",
    "NotFound",
    "PayloadTooLarge",
    "PulledWeights",
    "ReceiptInvalid",
    "ReceiptKey",
    "Report",
    "RequestFailed",
    "RequestStatus",
    "Retry",
    "ServerError",
    "ServiceUnavailable",
    "SignedReceipt",
    "Tier",
    "Unauthorized",
    "ValidationFailed",
    "Version",
    "WaitTimeout",
    "__version__",
]
