"""swarmd's built-in engine plugins, one module per kind.

Each module defines one :class:`swarmd.engines.base.Engine` subclass and is
registered under the ``swarmd.engines`` entry point group, exactly as a
third-party plugin would be; :mod:`swarmd.engines.registry` also knows them by
name so that a source checkout works without an install.
"""
