"""LaVin data engine: pure renderers, degradations, sources and the shard format."""

__version__ = "0.1.0"
