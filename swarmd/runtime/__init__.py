"""The effects: threads, sockets and the composition root, the top layer below the CLI.

- :mod:`swarmd.runtime.assembly` -- the composition root: builds the libp2p
  host, the node, the HTTP side and the services and hands each the narrow
  interface it needs (called by :mod:`swarmd.daemon`).
- :mod:`swarmd.runtime.node` -- the trio shell around the sans-IO node machine
  (:mod:`swarmd.core.node`): timers, the transport, snapshots, logs.
- p2p over py-libp2p: :mod:`~swarmd.runtime.p2p` (frame transport, the
  ``P2PNode`` facade), ``p2p_admission`` (the admission gate), ``p2p_dialer``
  (dialling, resolving bare addresses), ``p2p_base``, ``p2p_framing``,
  ``p2p_addrs``; ``discovery`` (mDNS).
- the asyncio thread: :mod:`~swarmd.runtime.http_side` runs it,
  :mod:`~swarmd.runtime.services` starts the engines, the OpenAI API and the
  control socket in it; :mod:`~swarmd.runtime.bridge` is the only way across
  between the two threads; :mod:`~swarmd.runtime.forward` forwards requests
  over libp2p.
- :mod:`~swarmd.runtime.lean_imports` keeps unused libp2p dependencies unloaded.
"""
