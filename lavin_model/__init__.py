"""J-DiT (``jdit``), rectified flow (``flow``), the in-context latent loader (``data``), the
DeepSpeed trainer (``train``) and template inference (``infer``). The ST-VAE and the shard
format they read live in :mod:`lavin_data`."""
