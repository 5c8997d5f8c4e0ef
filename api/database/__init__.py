"""The persistence layer shared by ``api`` and ``worker``: engine, sessions, base class."""
