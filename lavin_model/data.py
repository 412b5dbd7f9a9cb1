"""In-context batches for J-DiT, read from latent shards with webdataset.

Reads the output of ``python -m lavin_data.encode_latents``: ``<root>/<task>/<shard>.tar``
(only committed shards, i.e. with their stats file), each sample holding
``input_moments.npy`` and ``target_moments.npy`` (fp16 (32, T', h, w): posterior mean, then
log-variance) and a json.

A batch of B examples:
- one N (context pairs) per batch, uniform in ``context`` = (min, max), 1–8 by default, so
  that a batch stacks into one tensor;
- per example a task drawn by weight, then the query pair and N context pairs of that task
  from its stream, none from the query's own source item (another variant or crop of the
  same image would let the model copy the answer);
- only ``train`` samples (the held-out ``val`` ones are for the validation loss);
- z sampled from the stored moments on every read (a fresh posterior sample each time);
- with probability ``drop_rate`` the whole batch's context becomes one all-zero latent
  frame, the negative of classifier-free guidance.

Returned tensors (float32): ``cond`` (B, 16, (2N+1)·T', h, w) = [in_1, tgt_1, ..., in_N,
tgt_N, query_in] and ``target`` (B, 16, T', h, w) = the query's target latent.

Shards are split by node and worker: each (rank, worker) reads its own slice of every
task's shard list (the whole list when a task has fewer shards than readers), in rounds of
``shards_per_round`` shards resampled with replacement, mixed in a shuffle buffer. Every
random draw derives from (seed, rank, stream, round or batch), so a stream's state is two
integers per task plus a batch counter: :class:`InContextLoader` records it for each batch
it hands out, and resuming from it re-reads at most one round per task and continues with
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from lavin_data.codecs import decode_npy
from lavin_data.shards import build_pairs_folder, read_stats, shard_done, stats_path
from lavin_data.split import split_count
from lavin_data.stvae import sample_latent
from lavin_model.flow import null_context

MEMBERS = ("input_moments.npy", "target_moments.npy")


STAGE_NAMES = {"render": "pixel pair (render stage)", "ingest": "base sample (ingest stage)"}


class LatentDataError(ValueError):
    """A latent folder, shard or sample that cannot be trained on (the message names the file
    and the problem). Its own type so the trainer can tell bad data, which it reports in one
    line and exit status 2, from a bug, even when a loader worker raised it: the DataLoader
    re-raises a worker's exception as its type with the worker's traceback in the message."""


def _seed(*parts: int) -> int:
    """One 63-bit seed from a tuple of ints (independent streams for distinct tuples)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).astype(np.uint64)
               .view(np.uint64)[0] >> np.uint64(1))


def committed_task_shards(root: str | Path, split: str | None = "train") -> dict[str, list[str]]:
    """{task: sorted committed latent shard paths with at least one sample of ``split``}
    ("train" | "val", as the stats record it; None: any), possibly empty. A shard changed
    after its commit is an error naming it."""
    root = Path(root)
    if not root.is_dir():
        raise LatentDataError(f"{root}: no such latent folder (the --out of lavin_data.encode_latents)")
    found = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "preview"):
        urls = []
        for t in sorted(d.glob("*.tar")):
            if not stats_path(t).exists():
                continue  # not committed: a run in progress, or one that was killed
            if not shard_done(t):
                raise LatentDataError(
                    f"{t}: changed or cut short after its commit (its size or its index's differs from "
                    f"{stats_path(t).name}); re-run python -m lavin_data.encode_latents to rebuild it "
                    "(python -m lavin_data.verify says what differs)")
            stats = read_stats(t)
            stage = stats.get("stage")
            if stage not in (None, "encode_latents"):  # latents committed before stages were recorded have none
                raise LatentDataError(
                    f"{t}: a {STAGE_NAMES.get(stage, repr(stage) + ' stage')} shard, not a latent shard: {root} is "
                    "not a latent folder. Give the --out of python -m lavin_data.encode_latents (which encodes a "
                    "build's pairs/ into latents)")
            if split_count(stats, split) > 0:
                urls.append(str(t))
        if urls:
            found[d.name] = urls
    return found


def find_task_shards(root: str | Path, tasks: list[str] | None = None, split: str | None = "train"
                     ) -> dict[str, list[str]]:
    """:func:`committed_task_shards`, restricted to ``tasks``; an error when a task (or every
    task) has none. Samples without a recorded split (latents of builds before splits
    existed) count as ``train``."""
    found = committed_task_shards(root, split)
    which = "" if split is None else f" with {split} samples"
    if tasks is not None:
        missing = sorted(set(tasks) - set(found))
        if missing:
            raise LatentDataError(f"{root}: no committed latent shards{which} for task(s) {missing}; "
                                  f"found {sorted(found)}")
        found = {t: found[t] for t in tasks}
    if not found:
        hint = (f"; {root} looks like a build folder: encode its pairs/ with python -m lavin_data.encode_latents "
                "and give that --out" if build_pairs_folder(root) else "")
        raise LatentDataError(f"{root}: no committed latent shards{which} (<task>/<shard>.tar with .stats.json)"
                              + hint)
    return found


def sample_info(sample: dict) -> tuple[str, str]:
    """(split, source item) of a latent sample, from its json (written by encode_latents;
    older latents without them: train, and the pair's base key or the sample key)."""
    try:
        info = json.loads(sample["json"]) if "json" in sample else {}
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise LatentDataError(f"{sample.get('__url__')}: sample {sample.get('__key__')}: json is not valid JSON "
                              f"({e})") from None
    if not isinstance(info, dict):
        info = {}
    pair = info.get("pair") if isinstance(info.get("pair"), dict) else {}
    split = info.get("split") or pair.get("split") or "train"
    item = info.get("item") or pair.get("base_key") or sample.get("__key__")
    return str(split), str(item)


def reader_slice(urls: list[str], rank: int, world_size: int, stream: int, num_streams: int) -> list[str]:
    """This reader's part of a task's shards: split by node, then by worker; readers share the
    whole list when there are fewer shards than readers (they still draw different rounds)."""
    part = urls[rank::world_size]
    part = part[stream::num_streams] if len(part) >= num_streams else part
    return part or urls


class TaskStream:
    """Endless samples of one task for one reader: rounds of ``shards_per_round`` shards drawn
    with replacement from ``urls``, read by webdataset through a shuffle buffer, keeping the
    samples of ``split`` only (each with ``__split__`` and ``__item__``, its source item).
    ``state`` = [round, position]; a stream rebuilt from it re-reads one round and continues
    exactly."""

    def __init__(self, urls: list[str], key: tuple[int, ...], shards_per_round: int, buffer: int,
                 state: list[int] | None = None, split: str | None = "train"):
        self.urls, self.key, self.shards_per_round, self.buffer = urls, key, shards_per_round, buffer
        self.split = split
        self.round, self.pos = state or (0, 0)
        self._it = None

    def _open_round(self):
        rng = random.Random(_seed(*self.key, self.round))
        urls = rng.choices(self.urls, k=self.shards_per_round)
        pipe = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.map(_with_info),
                                wds.select(lambda s: self.split is None or s["__split__"] == self.split),
                                wds.shuffle(self.buffer, initial=self.buffer, rng=rng))
        it = iter(pipe)
        for _ in range(self.pos):  # resume: replay the round's order up to where it stopped
            next(it)
        return it

    def __next__(self) -> dict:
        for _ in range(1000):
            if self._it is None:
                self._it = self._open_round()
            try:
                sample = next(self._it)
                self.pos += 1
                return sample
            except StopIteration:
                self._it, self.round, self.pos = None, self.round + 1, 0
        raise RuntimeError(f"1000 empty rounds in a row from {self.urls[:3]}...: are the shards empty?")

    def state(self) -> list[int]:
        return [self.round, self.pos]


def _with_info(sample: dict) -> dict:
    sample["__split__"], sample["__item__"] = sample_info(sample)
    return sample


def dotted_key_problem(members: list[str], expected: tuple[str, ...]) -> str | None:
    """The message for a sample whose member names carry a dot inside the key (``a.b.json``):
    WebDataset ends the key at the first dot, so ``a.b.json`` is member ``b.json`` of key ``a``.
    None when no member looks like that."""
    if not any(n.endswith("." + e) for n in members for e in expected):
        return None
    return (f"member names {sorted(members)} have a dot in the key: WebDataset keys end at the first dot of "
            "the file name, so these are not the expected " + ", ".join(expected) +
            "; write keys without dots")


def _moments(sample: dict, member: str) -> np.ndarray:
    where = f"{sample.get('__url__')}: sample {sample.get('__key__')}"
    if member not in sample:
        names = sorted(k for k in sample if not k.startswith("__"))
        problem = dotted_key_problem(names, (*MEMBERS, "json"))
        raise LatentDataError(f"{where}: {problem}" if problem else f"{where} has no {member} (members: {names})")
    try:
        m = decode_npy(sample[member])  # allow_pickle=False: an object array is refused, never unpickled
    except ValueError as e:
        if "Object arrays" in str(e):
            raise LatentDataError(f"{where}: {member} is an object array (pickled), which is refused: latent moments "
                                  "are fp16 arrays") from None
        if "pickle" in str(e):  # not .npy at all: np.load took it for a pickle
            raise LatentDataError(f"{where}: {member} is not an .npy array (a pickle, or other bytes), which is "
                                  "refused") from None
        raise LatentDataError(f"{where}: {member} cannot be decoded as .npy: {e}") from None
    except (OSError, EOFError) as e:  # a truncated or corrupt header
        raise LatentDataError(f"{where}: {member} cannot be decoded as .npy: {type(e).__name__}: {e}") from None
    if m.ndim != 4 or m.shape[0] != 32:
        raise LatentDataError(f"{sample.get('__url__')}: sample {sample.get('__key__')}: {member} has shape {m.shape}, "
                              "expected (32, T', h, w) moments")
    return m


class InContextBatches(torch.utils.data.IterableDataset):
    """Endless in-context batches (see the module docstring); use through :class:`InContextLoader`.

    Each DataLoader worker runs one *stream* of batches; batch k of the run comes from stream
    k mod num_workers (the DataLoader's round robin), as its (k // num_workers)-th batch.
    """

    def __init__(self, root: str | Path, batch_size: int, context: tuple[int, int] = (1, 8),
                 task_weights: dict[str, float] | None = None, drop_rate: float = 0.1, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shards_per_round: int = 4, shuffle_buffer: int = 256,
                 split: str | None = "train"):
        super().__init__()
        if not 1 <= context[0] <= context[1]:
            raise ValueError(f"context range must satisfy 1 <= min <= max, got {context}")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        weights = {t: float(w) for t, w in (task_weights or {}).items() if w > 0}
        self.shards = find_task_shards(root, sorted(weights) if weights else None, split)
        self.split = split
        self.tasks = sorted(self.shards)
        w = np.array([weights.get(t, 1.0) for t in self.tasks])
        self.weights = w / w.sum()
        self.batch_size, self.context, self.drop_rate = batch_size, context, drop_rate
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shards_per_round, self.shuffle_buffer = shards_per_round, shuffle_buffer
        self.start_batch, self.start_states = 0, {}

    def resume(self, batches: int, states: dict) -> None:
        """Continue after ``batches`` batches; ``states`` {stream: state} as recorded by the loader."""
        self.start_batch, self.start_states = batches, {int(k): v for k, v in states.items()}

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_streams = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader always starts its round robin at worker 0, so after k batches worker w
        # continues stream (w + k) mod num_streams.
        stream = (worker + self.start_batch) % num_streams
        state = self.start_states.get(stream)
        ident = dict(seed=self.seed, rank=self.rank, world_size=self.world_size, num_streams=num_streams,
                     tasks=self.tasks)
        if state is not None and {k: state.get(k) for k in ident} != ident:
            warnings.warn(f"loader state was saved with {({k: state.get(k) for k in ident})}, now {ident}: "
                          "starting fresh data streams (the run continues, but not sample-for-sample)", stacklevel=2)
            state, salt = None, self.start_batch
        else:
            salt = 0
        if state is None:
            j = -(-(self.start_batch - stream) // num_streams) if self.start_batch else 0
            stream_states = {}
        else:
            j, stream_states = state["next"], state["streams"]
        streams = {
            t: TaskStream(reader_slice(self.shards[t], self.rank, self.world_size, stream, num_streams),
                          (self.seed, salt, self.rank, stream, i), self.shards_per_round, self.shuffle_buffer,
                          stream_states.get(t), self.split)
            for i, t in enumerate(self.tasks)}
        while True:
            batch = self.make_batch(streams, (self.seed, salt, self.rank, stream, j))
            j += 1
            batch["loader_state"] = dict(ident, stream=stream, next=j,
                                         streams={t: s.state() for t, s in streams.items()})
            yield batch

    def make_batch(self, streams: dict[str, TaskStream], key: tuple[int, ...]) -> dict:
        rng = np.random.default_rng(_seed(*key))
        n = int(rng.integers(self.context[0], self.context[1] + 1))
        tasks = [self.tasks[i] for i in rng.choice(len(self.tasks), size=self.batch_size, p=self.weights)]
        drop = bool(rng.random() < self.drop_rate)
        moments, keys = [], []
        for task in tasks:
            query = next(streams[task])
            pairs = [*context_pairs(streams[task], query["__item__"], n, task), query]
            keys.append([p["__key__"] for p in pairs])
            moments.append([_moments(p, m) for p in pairs for m in MEMBERS])  # in_1, tgt_1, ..., query in, tgt
        shapes = {m.shape for ex in moments for m in ex}
        if len(shapes) > 1:
            raise LatentDataError(f"latent shapes differ within a batch: {sorted(shapes)} "
                                  f"(tasks {sorted(set(tasks))}); train on latents of one resolution")
        m = torch.from_numpy(np.stack([np.stack(ex) for ex in moments]))  # (B, 2N+2, 32, T', h, w) fp16
        b, f, _, tl, h, w = m.shape
        gen = torch.Generator().manual_seed(_seed(*key, 1))
        z = sample_latent(m.reshape(b * f, 32, tl, h, w), gen).reshape(b, f, 16, tl, h, w)
        z = z.permute(0, 2, 1, 3, 4, 5).reshape(b, 16, f * tl, h, w)
        cond, target = z[:, :, : (f - 1) * tl], z[:, :, (f - 1) * tl:]
        if drop:
            cond = null_context(cond)
        return {"cond": cond.contiguous(), "target": target.contiguous(), "tasks": tasks, "keys": keys,
                "n_context": n, "dropped": drop}


def context_pairs(stream: TaskStream, item: str, n: int, task: str, max_draws: int = 1000) -> list[dict]:
    """The next ``n`` samples of ``stream`` that do not come from the source item ``item``
    (the query's): another variant, crop or object of the query's own image would let the
    model copy the answer from its context. Samples of that item are passed over."""
    out, drawn = [], 0
    while len(out) < n:
        if drawn == max_draws:
            raise LatentDataError(f"task {task}: {max_draws} samples in a row come from the query's own source item "
                                  f"{item!r}: in-context training needs pairs of at least two source items per task")
        s = next(stream)
        drawn += 1
        if s["__item__"] != item:
            out.append(s)
            drawn = 0
    return out


def _ignore_stop_signals(_worker_id: int) -> None:
    # Ctrl-C and the launcher's SIGTERM reach the loader processes too; they leave the
    # trainer to save a checkpoint and end them, instead of dying under its current step.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class InContextLoader:
    """Iterates :class:`InContextBatches` through a DataLoader (``num_workers`` processes)
    and moves the tensors to ``device``. ``state_dict()`` is the state as of the last batch
    handed out (not of batches still prefetched), so a checkpoint resumes exactly."""

    def __init__(self, dataset: InContextBatches, device: torch.device | str = "cpu", num_workers: int = 2,
                 prefetch_factor: int = 4):
        self.dataset, self.device = dataset, torch.device(device)
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.batches, self.states = 0, {}

    def state_dict(self) -> dict:
        return {"batches": self.batches, "streams": {str(k): v for k, v in self.states.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.batches = int(state["batches"])
        self.states = {int(k): v for k, v in state["streams"].items()}

    def __iter__(self):
        self.dataset.resume(self.batches, self.states)  # continue after the batches handed out so far
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            persistent_workers=False, worker_init_fn=_ignore_stop_signals if self.num_workers else None)
        it = iter(loader)
        try:
            for batch in it:
                st = batch.pop("loader_state")
                self.states[st["stream"]] = st
                self.batches += 1
                yield {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        finally:
            _stop_workers(it)


def _stop_workers(it) -> None:
    """Ends a DataLoader iterator's worker processes now, whether iteration ended, failed or was
    abandoned. Left to garbage collection, an iterator held by a traceback outlives the run, and
    at interpreter exit multiprocessing SIGTERMs its workers, which ignore SIGTERM
    (:func:`_ignore_stop_signals`), then joins them forever: a failed run would hang. The
    polite shutdown (DataLoader's own) comes first; what survives it is killed."""
    shutdown = getattr(it, "_shutdown_workers", None)  # private, but what DataLoader's __del__ calls
    if shutdown is not None:
        shutdown()
    for w in getattr(it, "_workers", []):
        if w.is_alive():
            w.kill()
            w.join(timeout=5)


def validation_batches(root: str | Path, n_context: int = 2, max_per_task: int = 16, seed: int = 0,
                       tasks: list[str] | None = None, pool: int = 64) -> dict[str, dict[str, torch.Tensor]]:
    """Fixed validation examples per task, so that successive validation losses compare:
    ``{task: {"cond": (V, 16, 2N+1, h, w), "target": (V, 16, 1, h, w), "keys": [...]}}``.

    The queries are the task's ``val`` samples (the first ``max_per_task`` by shard and key);
    each has ``n_context`` context pairs drawn (by ``seed``) from the first ``pool`` ``train``
    samples of the task, none from the query's own source item. Latents are the normalised
    posterior means (no sampling noise). Tasks without val samples are left out."""
    from lavin_data.stvae import mean_latent

    val_shards = {t: urls for t, urls in committed_task_shards(root, "val").items() if tasks is None or t in tasks}
    train_shards = committed_task_shards(root, "train")
    out = {}
    for ti, task in enumerate(sorted(val_shards)):
        queries = _first_samples(val_shards[task], "val", max_per_task)
        candidates = _first_samples(train_shards.get(task, []), "train", pool)
        rng = np.random.default_rng(_seed(seed, ti))
        conds, targets, keys = [], [], []
        for q in queries:
            others = [c for c in candidates if c["__item__"] != q["__item__"]]
            if len(others) < n_context:
                continue
            ctx = [others[i] for i in rng.choice(len(others), n_context, replace=False)]
            frames = [_moments(p, m) for p in ctx for m in MEMBERS] + [_moments(q, MEMBERS[0])]
            z = mean_latent(torch.from_numpy(np.stack(frames)))  # (2N+1, 16, T', h, w)
            conds.append(z.permute(1, 0, 2, 3, 4).flatten(1, 2))  # (16, (2N+1)T', h, w)
            targets.append(mean_latent(torch.from_numpy(_moments(q, MEMBERS[1])[None]))[0])
            keys.append([c["__key__"] for c in ctx] + [q["__key__"]])
        if conds:
            out[task] = {"cond": torch.stack(conds), "target": torch.stack(targets), "keys": keys}
    return out


def _first_samples(urls: list[str], split: str, n: int) -> list[dict]:
    """The first ``n`` samples of ``split`` in ``urls``, in order (with ``__split__``, ``__item__``)."""
    from lavin_data.shards import iter_tar_samples

    got = []
    for url in urls:
        for key, m in iter_tar_samples(url):
            s = _with_info(dict(m, __key__=key, __url__=url))
            if s["__split__"] == split:
                got.append(s)
                if len(got) == n:
                    return got
    return got


VAL_T = (0.1, 0.3, 0.5, 0.7, 0.9)  # the fixed time grid of the validation loss


@torch.no_grad()
def validation_loss(model, batches: dict[str, dict], seed: int = 0, batch_size: int = 8,
                    t_grid: tuple[float, ...] = VAL_T) -> dict[str, float]:
    """Per task: the flow loss (:func:`lavin_model.flow.flow_loss`) averaged over the fixed
    ``t_grid`` and the task's validation examples, with noise fixed by ``seed`` and the
    example's position: the same model gives the same number every time."""
    from lavin_model.flow import flow_loss

    device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else torch.device("cpu")
    losses = {}
    for ti, (task, b) in enumerate(sorted(batches.items())):
        gen = torch.Generator().manual_seed(_seed(seed, ti, 7))
        x0 = torch.randn(b["target"].shape, generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(b["target"]), batch_size):
            x1, cond, noise = (v[i:i + batch_size].to(device) for v in (b["target"], b["cond"], x0))
            for t in t_grid:
                tt = torch.full((len(x1),), t, device=device)
                total += float(flow_loss(model, x1, cond, t=tt, x0=noise)) * len(x1)
                n += len(x1)
        losses[task] = total / n
    return losses
