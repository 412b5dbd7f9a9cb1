"""One Ray session per process, shared by the build, the latent encoder and the tests."""

from __future__ import annotations

import logging
import os


class _DropNoise(logging.Filter):
    """Ray warnings that every build would print and that ask nothing of the user: that a local
    cluster uses token authentication (Ray's default, which we keep), and that progress bars
    are off (we turn them off: our stages print their own per-shard progress)."""

    NOISE = ("Token authentication is enabled for this Ray cluster", "Progress bars disabled")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


_NOISY_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress")


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start Ray once per process (a test session shares it), or join ``RAY_ADDRESS``
    (then ``num_cpus`` is ignored: the cluster has its own)."""
    import ray

    if ray.is_initialized():
        return
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our stages print their own per-shard progress
    ctx.print_on_execution_start = False
