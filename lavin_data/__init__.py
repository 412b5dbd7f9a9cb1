"""LaVin data engine, the library: spec, task registry, geometry, renderers, degradations,
sources, labelers, the shard format, the ST-VAE and latent encoding (no Ray orchestration
of the pixel build: that is `pipelines`)."""

__version__ = "0.1.0"
