"""Model sources: each turns a parsed spec into a :class:`~swarmd.models.sources.base.Plan`."""
