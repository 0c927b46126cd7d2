"""Per-run locks: two sweeps on one record store never train the same run at the same time.

A driver takes the lock of a run (``<store>/locks/<kind>/<run_id>.lock``) before it starts it and
holds it until the run's record is written. Another driver that finds the lock taken does not wait
idle: it goes on with other runs and comes back to that one; once the lock is free it reads the
store, and reuses the record the first driver wrote (or, if that driver stopped without writing
one, trains the run itself).

The locks are ``filelock.FileLock``: an OS lock (``flock`` on Unix) on the file, which the kernel
releases when the holding process ends, however it ends (``kill -9`` included), so a lock is never
stale: there is nothing to expire or break. filelock removes a lock's file on release (older
versions leave it: empty files, safe to delete whenever no sweep runs on the store). On a network
filesystem the locks are as good as its ``flock`` (NFSv4: yes).
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

LOCKS_DIR = "locks"


class RunLocks:
    """The locks of one store; ``try_acquire`` never blocks, ``hold`` waits."""

    def __init__(self, root: str | Path) -> None:
        self.dir = Path(root) / LOCKS_DIR

    def path_for(self, kind: str, key: str) -> Path:
        return self.dir / kind / f"{key}.lock"

    def _lock(self, kind: str, key: str) -> FileLock:
        path = self.path_for(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path), thread_local=False)

    def try_acquire(self, kind: str, key: str) -> FileLock | None:
        """The lock, held, or None when another process holds it."""
        lock = self._lock(kind, key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None
        return lock

    def hold(self, kind: str, key: str, timeout: float = -1) -> FileLock:
        """The lock, waiting for it (``timeout`` seconds, -1: as long as it takes)."""
        lock = self._lock(kind, key)
        lock.acquire(timeout=timeout, poll_interval=0.2)
        return lock


def release(lock: FileLock | None) -> None:
    if lock is not None and lock.is_locked:
        lock.release(force=True)
