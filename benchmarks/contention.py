"""Whether a benchmark's own figures were measured on a contended machine.

A benchmark keeps a :class:`Meter` over its run and wraps its timed sections in
``meter.section(...)``; ``meter.note()`` then gives ``None`` or one line starting with
``contended:`` that names the measurement showing it and ends with "rerun on an idle
machine". Every signal is measured during the run, none is guessed from the figures:

- run-queue wait (Linux ``/proc/thread-self/schedstat``): the time the timing thread was
  runnable but had no CPU, over the single-threaded timed sections, as a share of their wall
  time. Above :data:`WAIT_SHARE` the figures are slowed by other work.
- where that file is missing: the process's CPU time against the wall time of its
  single-threaded sections. A process that got less than :data:`CPU_SHARE` of its wall time
  on a CPU was descheduled (or waited on I/O; the note says both).
- the 1-minute load average at the start and at the end of a run of at least
  :data:`MIN_LOAD_SECONDS`. The kernel moves it every 5 s by a factor ``exp(-5/60)`` towards the
  number of runnable (and uninterruptible) tasks, so over a run of ``T`` s
  ``after = before * d + mean * (1 - d)`` with ``d = exp(-T / 60)`` and ``mean`` the run's load
  weighted as the average weighs it (the last minute most). Less the CPUs the benchmark itself
  kept busy, weighted the same way, that is the load of other work. It is contention when
  that exceeds the CPUs the benchmark leaves free (``os.cpu_count()`` less its peak) by more
  than :data:`LOAD_SLACK`. Shorter runs have too few updates to tell; the load before the run
  alone would also count the work of the minute before, which may be over.

The CPUs the benchmark keeps busy are what it says it asks for, section by section (an
overestimate only makes the note rarer). :func:`contention_note` is the decision on measured
:class:`Figures`, with no I/O.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

WAIT_SHARE = 0.10
CPU_SHARE = 0.80
LOAD_SLACK = 0.5
MIN_LOAD_SECONDS = 30.0
# Shares of shorter sections are mostly scheduler noise (a few 4 ms time slices).
MIN_SECTION_SECONDS = 0.5
ADVICE = "rerun on an idle machine"


@dataclass(frozen=True)
class Figures:
    """What a :class:`Meter` measured over one run; times in seconds, loads in runnable tasks."""

    cpus: int  # os.cpu_count(): what the load average counts against
    own_cpus: float  # CPUs the benchmark kept busy, mean over the run as the load average weighs it
    peak_own_cpus: float  # the most it kept busy at once
    seconds: float  # wall time of the run
    load_before: float | None = None  # 1-minute load average at the start (None: not available)
    load_after: float | None = None  # and at the end
    single_s: float = 0.0  # wall time of the single-threaded timed sections
    single_cpu_s: float = 0.0  # CPU time of this process inside them
    wait_s: float | None = None  # run-queue wait of the timing thread inside them (None: no schedstat)

    def as_dict(self) -> dict:
        return asdict(self)


def others_load(load_before: float, load_after: float, seconds: float, own_cpus: float) -> float | None:
    """Mean load of other work during a run of ``seconds`` in which the benchmark kept
    ``own_cpus`` CPUs busy, from the 1-minute load averages at its start and end (see the
    module docstring); None for runs shorter than :data:`MIN_LOAD_SECONDS`."""
    if seconds < MIN_LOAD_SECONDS:
        return None
    d = math.exp(-seconds / 60.0)
    return (load_after - load_before * d) / (1.0 - d) - own_cpus


def weighted_own(spans: Sequence[tuple[float, float, float]], seconds: float, rest_cpus: float) -> float:
    """CPUs a run of ``seconds`` kept busy, as the 1-minute load average at its end weighs
    them: ``spans`` are (start, end, CPUs) in seconds from the run's start, ``rest_cpus`` what
    it keeps busy outside them. A span from a to b adds ``cpus * (exp(-(T-b)/60) - exp(-(T-a)/60))``
    to the average; divided by ``1 - exp(-T/60)``, the total reads as a mean."""
    if seconds <= 0:
        return rest_cpus

    def weight(a: float, b: float) -> float:
        return math.exp(-(seconds - b) / 60.0) - math.exp(-(seconds - a) / 60.0)

    total = weight(0.0, seconds)
    inside = sum(weight(a, b) for a, b, _ in spans)
    return (sum(c * weight(a, b) for a, b, c in spans) + rest_cpus * (total - inside)) / total


def contention_note(f: Figures, findings: Sequence[str] = ()) -> str | None:
    """``"contended: <what shows it>; ...; rerun on an idle machine"``, or None when nothing
    does. ``findings`` are the benchmark's own reasons (figures that contradict each other in
    a way only contention explains); they are listed first."""
    reasons = list(findings)
    if f.single_s >= MIN_SECTION_SECONDS:
        if f.wait_s is not None:
            if f.wait_s > WAIT_SHARE * f.single_s:
                reasons.append(f"the timing thread waited for a CPU for {f.wait_s / f.single_s:.0%} of its timed "
                               f"sections ({f.wait_s:.1f} s of {f.single_s:.1f} s)")
        elif f.single_cpu_s < CPU_SHARE * f.single_s:
            reasons.append(f"this process was on a CPU for only {f.single_cpu_s / f.single_s:.0%} of its "
                           f"single-threaded timed sections ({f.single_cpu_s:.1f} s of {f.single_s:.1f} s): it waited "
                           f"for a CPU or for I/O")
    if f.load_before is not None and f.load_after is not None:
        others = others_load(f.load_before, f.load_after, f.seconds, f.own_cpus)
        free = max(f.cpus - f.peak_own_cpus, 0.0)
        if others is not None and others > free + LOAD_SLACK:
            reasons.append(f"other work averaged {others:.1f} runnable tasks beside this benchmark's "
                           f"{f.own_cpus:.1f} on {f.cpus} CPUs (1-minute load average {f.load_before:.2f} -> "
                           f"{f.load_after:.2f} over {f.seconds:.0f} s)")
    return "contended: " + "; ".join(reasons + [ADVICE]) if reasons else None


def _load1() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not every platform has one
        return None


def _thread_wait() -> float | None:
    """Seconds the calling thread has waited runnable for a CPU, or None where the kernel does
    not keep it (no file, or schedstat accounting off: on-CPU time reads 0)."""
    try:
        with open("/proc/thread-self/schedstat") as fh:
            on_cpu, wait = fh.read().split()[:2]
    except (OSError, ValueError):
        return None
    return int(wait) / 1e9 if int(on_cpu) > 0 else None


class Meter:
    """Contention readings over one benchmark run: construct it at the start (reads the load
    average), wrap the timed sections in :meth:`section`, call :meth:`note` at the end.

    ``own_cpus``: the CPUs the benchmark keeps busy outside its sections (a driver process: 1).
    """

    def __init__(self, own_cpus: float = 1.0) -> None:
        self.own_cpus = own_cpus
        self.figures: Figures | None = None  # set by note()
        self._t0, self._load0 = time.perf_counter(), _load1()
        self._spans: list[tuple[float, float, float]] = []
        self._single_s = self._single_cpu_s = 0.0
        self._wait_s: float | None = 0.0
        self._peak = own_cpus

    @contextmanager
    def section(self, own_cpus: float | None = None, single_threaded: bool = False) -> Iterator[None]:
        """A timed section keeping ``own_cpus`` CPUs busy (default: the meter's). Put the
        section around the benchmark's own timer: its readings (a file read) stay outside it.
        ``single_threaded``: the work runs in the calling thread alone (and threads that do not
        run at the same time), so its run-queue wait and CPU share are measured."""
        own = self.own_cpus if own_cpus is None else own_cpus
        w0, c0, q0 = time.perf_counter(), time.process_time(), _thread_wait() if single_threaded else None
        try:
            yield
        finally:
            q1 = _thread_wait() if single_threaded else None
            w1 = time.perf_counter()
            dt = w1 - w0
            self._spans.append((w0 - self._t0, w1 - self._t0, own))
            self._peak = max(self._peak, own)
            if single_threaded:
                self._single_s += dt
                self._single_cpu_s += time.process_time() - c0
                self._wait_s = None if q0 is None or q1 is None or self._wait_s is None else self._wait_s + q1 - q0

    def note(self, findings: Sequence[str] = ()) -> str | None:
        """The run's note (:func:`contention_note`); its figures stay in :attr:`figures`."""
        seconds = time.perf_counter() - self._t0
        own = weighted_own(self._spans, seconds, self.own_cpus)
        self.figures = Figures(cpus=os.cpu_count() or 1, own_cpus=own, peak_own_cpus=self._peak, seconds=seconds,
                               load_before=self._load0, load_after=_load1(), single_s=self._single_s,
                               single_cpu_s=self._single_cpu_s, wait_s=self._wait_s if self._single_s else None)
        return contention_note(self.figures, findings)
