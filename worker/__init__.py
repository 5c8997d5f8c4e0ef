"""Lethe workers: the embedded thread of ``lethe serve`` (:mod:`worker.embedded`) and the
distributed Celery workers of ``lethe worker`` (:mod:`worker.celery_app`, :mod:`worker.tasks`,
:mod:`worker.dispatch`, :mod:`worker.main`)."""
