"""One writer per output folder: an exclusive ``flock`` on ``<output>/.lock``, held for a
whole build or latent encoding.

The lock file holds the holder's ``pid host start-time`` so that a second run can say who
is writing. The kernel drops a ``flock`` when its process dies (killed or not), so a lock
file left by a dead run never blocks: the next run takes it and reports the stale holder.

On shared storage: Linux maps ``flock`` on NFS (v4, or v3 with the lock manager) to a
byte-range lock the server arbitrates, so two drivers on different hosts exclude each other
there too; on a file system without lock support ``flock`` fails and the run stops with
that error. Only the driver takes the lock: Ray workers write shards under it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path


class OutputLockError(RuntimeError):
    """Another live run holds the output folder; the message names its pid and host."""


class OutputLock:
    """``with OutputLock(output): ...`` holds ``output/.lock`` exclusively (creating the folder).

    ``stale_holder``: what a previous holder that died without releasing wrote into the lock
    file (``"pid 123 on host h since ..."``), or None.
    """

    def __init__(self, output: str | os.PathLike, flag: str = "--output"):
        self.output, self.flag = Path(output), flag  # the command's option naming the folder, for messages
        self.path = self.output / ".lock"
        self.stale_holder: str | None = None
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.output.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "a run that has not said who it is"
            os.close(fd)
            raise OutputLockError(f"{self.output} is being written by another run ({holder}); wait for it to "
                                  f"finish, or use another {self.flag}") from None
        except OSError:
            os.close(fd)
            raise
        self.stale_holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or None
        me = f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # released cleanly: the next run sees no stale holder
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def os_problem(e: OSError, output: str | None) -> str:
    """What a user reads for an OSError of a run writing into ``output``: the path, whether
    it was being written or read, what the system said, what to do."""
    path = e.filename or output or "?"
    writing = output is not None and Path(str(path)).resolve().is_relative_to(Path(output).resolve())
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
            errno.EROFS: "choose a writable output folder", errno.EACCES: "check its permissions",
            errno.EPERM: "check its permissions"}.get(e.errno, "check the path")
    return (f"cannot {'write' if writing else 'read'} {path}: {e.strerror or e} ({hint}; a re-run keeps "
            "the shards already finished)")
