"""The local control API: ``server`` (daemon side, aiohttp) and ``client`` (stdlib only).

Nothing is imported here so ``swarmctl`` can import the client without aiohttp.
"""
