"""Peak memory of a process tree, as the proportional set size (PSS) from /proc:
shared pages (Lava's forked workers share their parent's libraries) count once."""
from __future__ import annotations

import os
import threading


def _pss(pid: str) -> int:
    """Proportional set size in bytes: shared pages (Lava's forked workers share
    the parent's libraries) count once in total, not once per process."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def descendants(root: int) -> list[int]:
    """Process ids of every descendant of process `root` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except OSError:
                continue  # gone meanwhile
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _tree_memory(root: int) -> int:
    """Memory in bytes of process `root` and all its descendants (PSS, from /proc)."""
    total = 0
    for pid in [root] + descendants(root):
        try:
            total += _pss(str(pid))
        except OSError:
            continue
    return total


class PeakMemory:
    """Samples the memory (PSS) of this process tree every `every` seconds."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak = every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_memory(os.getpid()))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_memory(os.getpid()))
