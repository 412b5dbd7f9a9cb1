"""Where a model runs: one rule for the labelers and the latent encoder (inference and the
trainer take a device from their command line)."""

from __future__ import annotations

DTYPES = ("fp32", "fp16", "bf16")


def device_and_dtype(want_gpu: bool, dtype: str):
    """-> (``"cuda"`` | ``"cpu"``, torch dtype). The GPU when asked for and present; half
    precision (``fp16`` / ``bf16``) only there, since on the CPU it is slow or unsupported."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    device = "cuda" if want_gpu and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device, torch.float32
    return device, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
