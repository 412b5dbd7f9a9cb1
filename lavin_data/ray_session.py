"""One Ray session per process, shared by the build, the latent encoder and the tests."""

from __future__ import annotations

import logging
import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start Ray once per process (a test session shares it), or join ``RAY_ADDRESS``
    (then ``num_cpus`` is ignored: the cluster has its own)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our stages print their own per-shard progress
    ctx.print_on_execution_start = False
