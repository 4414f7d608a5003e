"""What every benchmark script shares: the machine's description, timing helpers, and writing one
section of docs/benchmarks.md while leaving the others alone. Scripts run as
``python benchmarks/<name>.py`` from the repository root, so this imports as ``_common``."""

from __future__ import annotations

import os
import re
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs/benchmarks.md"


def cpu_name() -> str:
    """'N cores (model name)' of this machine, as the scheduler lets this process use them."""
    cpu = "unknown CPU"
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return f"{len(os.sched_getaffinity(0))} cores ({cpu})"


def median_seconds(func: Callable[[], object], runs: int) -> float:
    """Median wall time of ``runs`` calls of ``func``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mib(func: Callable[[], object]) -> float:
    """Peak traced Python allocation of one call of ``func``, in MiB."""
    tracemalloc.start()
    try:
        func()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def write_section(section: str, body: str) -> None:
    """Replace the ``section`` heading's part of docs/benchmarks.md with ``body`` (which starts with
    that heading), or append it at the end; the other sections stay as they are."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: body.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text.rstrip("\n") + "\n")
