"""Webhooks: tenants' endpoints told of published and withdrawn versions and of completed
and exact requests, by signed, retried, de-duplicable JSON POSTs (see
``docs/operations/webhooks.md``)."""
