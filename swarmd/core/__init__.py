"""The rules: sans-IO protocol logic and pure data, the bottom layer of swarmd.

Nothing here does I/O, reads a clock, starts a thread or imports trio,
libp2p or aiohttp; events and ``now`` go in, actions come out
(tests/unit/test_layout.py checks that this package imports only itself).

- :mod:`swarmd.core.node` -- the node machine: one object holding membership,
  the lease and this node's record, driven alike by the daemon's trio shell
  (:mod:`swarmd.runtime.node`) and the simulator (``swarmd/testing/simnet.py``).
- membership (SWIM + Lifeguard): :mod:`~swarmd.core.membership` (facade) and
  its parts ``membership_state``, ``membership_detector``, ``membership_sync``,
  ``membership_records``, ``membership_types``; wire codec :mod:`~swarmd.core.wire`
  (+ ``wire_messages``, ``wire_decode``); ``lifeguard``, ``broadcast_queue``,
  ``indexed_set``, ``records`` (record transport), ``membership_config``.
- the coordinator lease: :mod:`~swarmd.core.lease` and its gossip wiring
  :mod:`~swarmd.core.lease_gossip`.
- data: :mod:`~swarmd.core.record` (the typed node record), :mod:`~swarmd.core.snapshot`
  (the published picture of the swarm), :mod:`~swarmd.core.views` (what
  ``swarmctl`` shows), :mod:`~swarmd.core.addrs` (seed and multiaddr parsing).
- :mod:`~swarmd.core.admission`, :mod:`~swarmd.core.forward_wire`,
  :mod:`~swarmd.core.routing`, :mod:`~swarmd.core.load_change`.
- replicated tables: :mod:`~swarmd.core.replica` (merge rules, delta gossip,
  anti-entropy), :mod:`~swarmd.core.hlc` (clocks), :mod:`~swarmd.core.tables`
  (the list); their contents: :mod:`~swarmd.core.keys`,
  :mod:`~swarmd.core.usage_counters`, :mod:`~swarmd.core.escrow` (budgets),
  :mod:`~swarmd.core.deployments` (deployments and placements).
- engines the swarm runs: :mod:`~swarmd.core.fit` (memory a model needs),
  :mod:`~swarmd.core.placement` (who runs what).

A new replicated swarm-wide table goes here: a ``TableSpec`` in
:mod:`~swarmd.core.tables` and its content rules in a new module
(protocol/tables.md); :class:`swarmd.core.node.NodeMachine` spreads, syncs
and snapshots it, the trio shell persists it.
"""
