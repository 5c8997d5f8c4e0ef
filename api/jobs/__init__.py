"""Background jobs: one lease for every job kind (erasure jobs, training runs, and the kinds
to come), one retry-or-fail policy, and the vocabulary of job states.

- :mod:`api.jobs.states`: :class:`JobState`, the states every job row moves through;
- :mod:`api.jobs.lease`: :class:`Lease`, claim with an attempt token, heartbeat, stale
  detection, release, fail, requeue abandoned and interrupted work, pending ids;
- :mod:`api.jobs.policy`: :func:`execute`, "retry with backoff if transient, else fail and
  audit", the bounded error text and the Celery retry options;
- :mod:`api.jobs.heartbeat`: the daemon thread that keeps a held job's heartbeat fresh.

A new job kind is a table with the lease's columns (:class:`api.jobs.lease.LeasedRow`) and a
function that does the work; it declares a :class:`Lease` over its table and calls
:func:`api.jobs.policy.execute`. Nothing else is written again.
"""
