"""Imports every ORM model so that ``Base.metadata`` is complete (Alembic, tests)."""

from api.audit.models import AuditEvent
from api.auth.models import ApiKey
from api.datasets.models import Dataset, Sample
from api.erasure.models import ErasureRequest, RequestJob
from api.purge.models import PurgedBlob
from api.registry.models import Model, ModelVersion, TrainingRun, VersionWithdrawal
from api.webhooks.models import Webhook, WebhookDelivery

__all__ = [
    "ApiKey", "AuditEvent", "Dataset", "ErasureRequest", "Model", "ModelVersion", "PurgedBlob",
    "RequestJob", "Sample", "TrainingRun", "VersionWithdrawal", "Webhook", "WebhookDelivery",
]
