"""The per-database parts of the benchmark, one module per database behind
:class:`~bench.databases.base.BenchDatabase`: the throwaway server, its settings, bulk loading,
the counters of a step, the hand-written raw-SQL loop.

* ``postgresql.py``: PostgreSQL (``--database postgresql``, the default);
* ``mysql.py``: MariaDB, through the engine's MySQL dialect (``--database mysql``).

``run.py`` picks one by ``--database``; ``child.py`` (a subprocess on the running server) by
the Django connection's vendor, the same name.
"""

from __future__ import annotations

from .base import BenchDatabase
from .mysql import MariaDB
from .postgresql import PostgreSQL

__all__ = ["BY_NAME", "BenchDatabase", "MariaDB", "PostgreSQL"]

#: ``--database`` value (Django's ``connection.vendor`` of that database) -> its class.
BY_NAME: dict[str, type[BenchDatabase]] = {"postgresql": PostgreSQL, "mysql": MariaDB}
