"""Seeded randomness: every random draw derives from (spec seed, stage, shard, key)."""

from __future__ import annotations

import hashlib

import numpy as np


def stable_int(text: str) -> int:
    """A 64-bit integer from ``text`` that is the same in every process and Python version."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def sample_rng(seed: int, *parts: str | int) -> np.random.Generator:
    """Generator for one sample of one stage: ``sample_rng(spec.seed, "render", task, shard, key)``."""
    entropy = [seed & 0xFFFFFFFFFFFFFFFF] + [p if isinstance(p, int) else stable_int(p) for p in parts]
    return np.random.default_rng(np.random.SeedSequence(entropy))
