"""ST-VAE wrapper, J-DiT, flow-matching objective and trainer (built in the encode_latents
and training issues; nothing here yet)."""
