"""Translators between client APIs and the OpenAI routes swarmd routes on.

Theory of operation
-------------------
Pure code (no aiohttp, no sockets, no clock reads): dicts and bytes in,
dicts and bytes out, so every mapping is tested against golden vectors
(``protocol/vectors/client-apis/``) without a server.  The HTTP handlers in
``swarmd/api/{ollama,responses,anthropic}_api.py`` do the I/O and call these.

- :mod:`.common`: :class:`TranslateError` (a request the target API cannot
  express, with status and parameter), :class:`SseReader` (OpenAI SSE bytes
  in, JSON chunks out, incrementally) and :class:`ChatDeltas`, which folds
  OpenAI ``chat.completion.chunk`` objects into neutral events (text,
  reasoning, tool-call start / argument deltas, finish, usage) that each
  target API's stream translator turns into its own events.
- :mod:`.ollama`: Ollama's ``/api/chat``, ``/api/generate``, ``/api/embed``
  and ``/api/embeddings`` to and from OpenAI, NDJSON streaming.
- :mod:`.responses`: OpenAI's Responses API to and from chat completions.
- :mod:`.anthropic`: Anthropic's Messages API to and from chat completions.

Each request mapping returns the OpenAI body to send; each module has a
non-streamed answer mapping and a stream translator with ``feed(chunk)`` /
``finish()`` returning the target API's frames, plus its own error shape.
"""
