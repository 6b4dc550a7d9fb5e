"""What the benchmark measures, and how: latencies, CPU time and memory of real processes."""

import contextlib
import statistics
from dataclasses import dataclass
from pathlib import Path

import psutil


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def latency_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and mean of `seconds`, in milliseconds."""
    return {
        "p50_ms": round(percentile(seconds, 50) * 1000, 1),
        "p99_ms": round(percentile(seconds, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(seconds) * 1000, 1) if seconds else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by the process, including the children it has
    waited for (PostgreSQL's postmaster waits for every backend that exits)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def tree_cpu_seconds(pid: int) -> float:
    """CPU time so far of the process and all of its live descendants (and the dead ones it
    reaped): for PostgreSQL, the postmaster and every backend."""
    total = cpu_seconds(pid)
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def peak_rss_mb(pid: int) -> float:
    """The highest resident set size the process and its live descendants have had (VmHWM,
    Linux, summed), in MB."""
    total = 0.0
    for process in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError):
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return round(total, 1)


def rss_mb(pid: int) -> float:
    """The resident set size of the process and its live descendants now, in MB."""
    total = 0
    for process in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return round(total / 2**20, 1)


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def postgres_memory_mb(postmaster_pid: int) -> float:
    """What PostgreSQL holds in memory now: the memory unique to each of its processes, plus
    its shared memory once (summing RSS would count shared buffers once per backend)."""
    processes = [psutil.Process(postmaster_pid), *psutil.Process(postmaster_pid).children()]
    unique = shared = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            info = process.memory_full_info()
            unique += info.uss
            shared = max(shared, info.shared)
    return round((unique + shared) / 2**20, 1)


@dataclass
class CpuWindow:
    """CPU seconds the given processes use between `start()` and `stop()`."""

    app_pids: list[int]
    postmaster_pid: int
    _app: float = 0.0
    _db: float = 0.0

    def start(self) -> "CpuWindow":
        # Whole trees: a service with several serving processes is a supervisor and them.
        self._app = sum(tree_cpu_seconds(pid) for pid in self.app_pids)
        self._db = tree_cpu_seconds(self.postmaster_pid)
        return self

    def stop(self) -> tuple[float, float]:
        """(app CPU seconds, PostgreSQL CPU seconds) since start()."""
        app = sum(tree_cpu_seconds(pid) for pid in self.app_pids) - self._app
        return app, tree_cpu_seconds(self.postmaster_pid) - self._db
