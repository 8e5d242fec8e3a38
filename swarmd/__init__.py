"""swarmd: a peer-to-peer cluster daemon for LLM inference."""

__version__ = "0.1.0"
