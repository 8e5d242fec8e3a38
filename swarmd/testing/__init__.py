"""swarmd's testing kit (as ``trio.testing``): helpers for tests and benchmarks.

Nothing in the daemon imports this package (tests/unit/test_layout.py checks
it); tests, ``bench/`` and third-party engine plugins may.

- :mod:`swarmd.testing.simnet` -- a simulated lossy network with a virtual
  clock, driving the daemon's own sans-IO node machine
  (:class:`swarmd.core.node.NodeMachine`) for each node;
- :mod:`swarmd.testing.streams` -- in-memory stand-ins for libp2p streams;
- :mod:`swarmd.testing.loops` -- an asyncio loop in a thread beside a trio run,
  with the bridge between them;
- :mod:`swarmd.testing.daemon` -- real ``swarmd`` daemons as subprocesses
  (the integration tests' harness);
- :mod:`swarmd.testing.netns` -- network namespaces on a bridge, for
  several hosts on one machine (root only).

The simulated OpenAI engine is :mod:`swarmd.engines.simulated`
(``swarmd-simengine``).
"""
