"""Shared pieces of the benchmark scripts: same-run timing, matmul peak, bandwidth, tables, JSON.

The machines benchmarks run on are shared and noisy, so a CPU speed figure is only reported as a
ratio taken in the same run: against the same work done by a reference implementation, and as a
fraction of the matmul FLOP/s (or, for memory-bound decoding, the streaming memory bandwidth)
measured on the same devices in the same run. `interleaved_times` alternates the contenders
(A B A B ...) so that a burst of load from elsewhere hits all of them. Torch is timed at several
thread counts in the same run (`thread_counts`, `with_torch_threads`) and compared at its best.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask), the size of XLA:CPU's thread pool."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_counts(spec: str | None, cores: int, *, flag: str = "--torch-threads") -> list[int]:
    """The distinct thread counts of a comma list `spec`, ascending; None means 1 and `cores`.

    Both ends by default: on a shared machine a multi-threaded run stalls whenever one of its
    threads is descheduled, so one thread can be the faster setting (`flag` names the option in errors).
    """
    if spec is None:
        return sorted({1, max(int(cores), 1)})
    try:
        counts = [int(item) for item in spec.split(",") if item.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ValueError(f"{flag} must be a comma list of integers >= 1 (e.g. 1,{max(int(cores), 1)}); got {spec!r}")
    return sorted(set(counts))


def torch_label(threads: int) -> str:
    """The name of a torch contender at `threads` intra-op threads in tables and timings: `torch@N`."""
    return f"torch@{threads}"


def with_torch_threads(fn: Callable[[], Any], threads: int) -> Callable[[], Any]:
    """`fn` preceded by `torch.set_num_threads(threads)` (a sub-microsecond call).

    Torch's thread count is process-wide, so each interleaved torch contender sets its own.
    """
    import torch  # noqa: PLC0415

    def run() -> Any:
        torch.set_num_threads(threads)
        return fn()

    return run


def load_average() -> tuple[float, float, float]:
    """The system's 1, 5 and 15 minute load averages (zeros where the OS has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def cpu_model_name() -> str:
    """`lscpu`'s "Model name" (e.g. "AMD EPYC"), else /proc/cpuinfo's, else `platform.processor()`."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_metadata(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Where and when a benchmark ran: UTC date, the command, CPU model, cores, load, versions.

    `load_average_1m_5m_15m` is taken when this is called (at the end of a run): other processes
    on a shared machine are what make absolute timings meaningless and ratios necessary.
    """
    argv = list(sys.argv if argv is None else argv)
    versions = {}
    for name in ("jax", "flax", "torch", "transformers"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(argv),
        "cpu": cpu_model_name(),
        "cpu_cores": available_cores(),
        "load_average_1m_5m_15m": [round(x, 2) for x in load_average()],
        "python": platform.python_version(),
        "versions": versions,
    }


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds one call of `fn` takes; `fn` must block until its work is done."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_times(fns: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 0,
                      settle: int = 0) -> dict[str, list[float]]:
    """Time every function `repeats` times, alternating them (A B A B ...), after `warmup` untimed rounds.

    `settle` untimed calls precede each timed call (A A B B ... with settle=1), so that a function
    is not charged for the caches and freshly faulted memory its predecessor left behind (an
    implementation that allocates gigabytes makes the next one's first call pay for page faults).
    Each `fns[name]()` must block until its work is done. Returns `{name: [repeats] seconds}`.
    """
    if not fns:
        raise ValueError("fns must name at least one function to time")
    if repeats < 1 or warmup < 0 or settle < 0:
        raise ValueError(f"repeats must be >= 1, warmup and settle >= 0; got repeats={repeats}, "
                         f"warmup={warmup}, settle={settle}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(settle):
                fn()
            times[name].append(time_call(fn))
    return times


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    if not values:
        raise ValueError("median of an empty sequence")
    return float(statistics.median(values))


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """`numerators[i] / denominators[i]` for timings taken in the same round of an interleaved run."""
    if len(numerators) != len(denominators):
        raise ValueError(f"paired timings must have equal lengths; got {len(numerators)} and {len(denominators)}")
    return [float(n) / float(d) for n, d in zip(numerators, denominators)]


def matmul_flops(size: int) -> float:
    """FLOPs of one `[M, M] @ [M, M]` product: 2 M^3."""
    return 2.0 * float(size) ** 3


def jax_matmul_fn(mesh: Any, size: int) -> Callable[[], Any]:
    """A blocking float32 `[M, M] @ [M, M]` with rows sharded over every device of `mesh` (compiled here)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    from jax.sharding import NamedSharding, PartitionSpec  # noqa: PLC0415

    rows = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    a = jax.device_put(jnp.ones((size, size), jnp.float32), rows)
    b = jax.device_put(jnp.ones((size, size), jnp.float32), NamedSharding(mesh, PartitionSpec()))
    matmul = jax.jit(lambda x, y: x @ y, out_shardings=rows)
    matmul(a, b).block_until_ready()
    return lambda: matmul(a, b).block_until_ready()


def torch_matmul_fn(size: int) -> Callable[[], Any]:
    """A float32 `[M, M] @ [M, M]` in PyTorch on the CPU, at the current `torch.get_num_threads()`.

    Wrap it in `with_torch_threads` to time it at a given thread count.
    """
    import torch  # noqa: PLC0415

    a = torch.ones((size, size), dtype=torch.float32)
    b = torch.ones((size, size), dtype=torch.float32)
    out = torch.empty((size, size), dtype=torch.float32)
    return lambda: torch.matmul(a, b, out=out)


def best_flops(times: Sequence[float], flops: float) -> float:
    """FLOP/s of the fastest of `times` (the least disturbed run estimates the machine's peak)."""
    return flops / min(times)


def stream_bytes(nbytes: int) -> float:
    """Bytes moved by one `y = x + 1` pass over an `nbytes` array: each byte read once and written once."""
    return 2.0 * float(nbytes)


def _stream_elements(nbytes: int) -> int:
    if nbytes < 4:
        raise ValueError(f"nbytes must be >= 4 (one float32); got {nbytes}")
    return nbytes // 4


def jax_stream_fn(nbytes: int) -> Callable[[], Any]:
    """A blocking jitted `y = x + 1` over an `nbytes` float32 array on the default device (compiled here).

    `x + 1` rather than a copy: XLA may alias or elide a plain copy, never an arithmetic pass.
    """
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    x = jnp.zeros((_stream_elements(nbytes),), jnp.float32)
    add_one = jax.jit(lambda v: v + 1.0)
    add_one(x).block_until_ready()
    return lambda: add_one(x).block_until_ready()


def torch_stream_fn(nbytes: int) -> Callable[[], Any]:
    """`y = x + 1` over an `nbytes` float32 tensor in PyTorch, into a preallocated output."""
    import torch  # noqa: PLC0415

    x = torch.zeros((_stream_elements(nbytes),), dtype=torch.float32)
    out = torch.empty_like(x)
    return lambda: torch.add(x, 1.0, out=out)


def best_bandwidth(times: Sequence[float], nbytes: int) -> float:
    """Bytes/s of the fastest `y = x + 1` pass over `nbytes` (the machine's streaming bandwidth)."""
    return stream_bytes(nbytes) / min(times)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    for row in cells:
        if len(row) != len(header):
            raise ValueError(f"every row must have {len(header)} cells like the header; got {row}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The same table as GitHub markdown, for `benchmarks/RESULTS.md`."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"every row must have {len(header)} cells like the header; got {list(row)}")
    out = ["| " + " | ".join(str(c) for c in header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_json(path: str | Path, result: Mapping[str, Any]) -> Path:
    """Write `result` as indented JSON (creating parent folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path
