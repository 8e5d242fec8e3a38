"""The swarm's replicated tables, in one list (where a new table is added).

Each entry is a :class:`~swarmd.core.replica.TableSpec`; its rules live in
their own ``core`` module (keys: :mod:`swarmd.core.keys`; usage counters:
:mod:`swarmd.core.usage_counters`; budget shares: :mod:`swarmd.core.escrow`).  The node machine spreads and syncs every
table listed here (:mod:`swarmd.core.replica`), the trio shell persists them
under ``data_dir/tables/`` and the snapshot carries them to the HTTP side.
"""

from __future__ import annotations

from swarmd.core.deployments import deployments_spec, placements_spec
from swarmd.core.escrow import budgets_spec, escrow_spec
from swarmd.core.keys import keys_spec
from swarmd.core.replica import TableSpec
from swarmd.core.usage_counters import usage_spec


def swarm_tables() -> tuple[TableSpec, ...]:
    return (keys_spec(), usage_spec(), escrow_spec(), budgets_spec(), deployments_spec(),
            placements_spec())
