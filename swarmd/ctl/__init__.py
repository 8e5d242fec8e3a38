"""``swarmctl``: a thin CLI over the local control API (one module per subcommand)."""
