"""Training analytics: what every step of a run cost in seconds, CPU and memory, and in money.

Two halves:

- **recording** (:class:`StepMeter`): called from the IO manager when a step stores an output, in
  the step's own process; it measures the step's CPU seconds (user + system, children included),
  the process's peak RSS and its OS thread count, and the rows the step read and wrote. With the
  multiprocess executor every step is a fresh process forked from the forkserver (its usage starts
  at zero there), so the figures are the step's own; with the in-process executor the CPU is the
  difference since the previous step's last output (orchestration between steps included) and the
  peak RSS is the process's peak so far (an upper bound for the step).
- **reporting** (:func:`run_report`): from the steps' walls (their STEP_START and STEP_SUCCESS /
  STEP_FAILURE events) and the recorded metadata, per-step and per-run totals, CPU utilization
  (CPU s / (wall x cores)), idle share, and cost by a rate card (:class:`RateCard`).

No Dagster import here: the callers pass plain values.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: metadata keys the IO manager adds to every materialization (read back by the report)
CPU_KEY, RSS_KEY, THREADS_KEY, ROWS_IN_KEY, ROWS_OUT_KEY = (
    "step_cpu_s", "step_peak_rss_mib", "step_threads", "step_rows_in", "step_rows_out")
#: added only where NVML sees a GPU (absent, not zero, without one)
GPU_UTIL_KEY, GPU_MEM_KEY, GPUS_KEY = "step_gpu_utilization_pct", "step_gpu_memory_peak_mib", "step_gpus"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mib() -> float:
    """Peak resident memory of this process (or of its largest child, if larger), MiB (Linux: KiB units)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return max(own.ru_maxrss, kids.ru_maxrss) / 1024.0


def os_threads() -> int | None:
    """OS threads of this process now (BLAS, OpenMP and torch pools included); None off Linux."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return None


class GpuSampler:
    """GPU use of this process while a step runs, through NVML (nvidia-ml-py, ``pynvml``): a daemon
    thread samples every ``interval_s`` the GPU memory this process holds on each device (the driver's
    compute-process entries for its pid) and, on the devices where it holds some, their utilization
    (device-wide, shared with any other process there). Without the package, a driver, a GPU, or an
    entry for this pid (a container whose pids the driver does not see), :meth:`figures` is empty:
    the step's GPU fields are absent, not zero, and it is not charged GPU time."""

    def __init__(self, interval_s: float = 0.5, nvml=None) -> None:
        self.interval_s = interval_s
        self._nvml = nvml
        self._handles: list = []
        self._util: list[float] = []
        self._peak_mib = 0.0
        self._mine: set[int] = set()  # devices on which this process held memory in this step
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        if self._thread is not None:
            return True
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            count = self._nvml.nvmlDeviceGetCount()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception:  # no package, no driver (NVMLError), no device: nothing to sample
            self._handles = []
        if not self._handles:
            return False
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="plml-gpu-sampler", daemon=True)
        self._thread.start()
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """One sample of the devices on which this process holds memory (listed under its pid). A device
        where the driver lists no process, or lists it under another pid namespace (some containers),
        is not attributed: unknown, so absent, rather than charging the step another process's GPU."""
        nv, pid = self._nvml, os.getpid()
        util, mine = [], 0.0
        for i, h in enumerate(self._handles):
            try:
                used = [p.usedGpuMemory for p in nv.nvmlDeviceGetComputeRunningProcesses(h)
                        if p.pid == pid and p.usedGpuMemory]
                if not used:
                    continue
                self._mine.add(i)
                mine += sum(used) / 2**20
                util.append(float(nv.nvmlDeviceGetUtilizationRates(h).gpu))
            except Exception:  # a transient NVML error loses one sample, not the step
                continue
        if util:
            self._util.append(sum(util) / len(util))
        self._peak_mib = max(self._peak_mib, mine)

    def reset(self) -> None:
        """Start a new step's figures (the in-process executor runs every step in one process)."""
        self._util, self._peak_mib, self._mine = [], 0.0, set()

    def figures(self) -> dict[str, float | int]:
        """Mean utilization of the devices this process used (device-wide: another process on the same
        device shares the figure), this process's peak GPU memory on them, and how many there were."""
        if not self._mine or not self._util:
            return {}
        return {GPU_UTIL_KEY: round(sum(self._util) / len(self._util), 1), GPU_MEM_KEY: round(self._peak_mib, 1),
                GPUS_KEY: len(self._mine)}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval_s + 1)
        self._thread = None


@dataclass
class StepMeter:
    """Per-process bookkeeping of the step being executed (see the module docstring)."""

    pid: int = field(default_factory=os.getpid)
    step: str | None = None
    base_cpu: float = field(default_factory=cpu_seconds)
    last_cpu: float = field(default_factory=cpu_seconds)
    rows_in: dict[str, int] = field(default_factory=dict)
    gpu: GpuSampler | None = None  # started at a step's first input or output, in the step's process
    gpu_step: str | None = None

    def _sync(self) -> None:
        if os.getpid() != self.pid:  # a forked step process: its usage counts from zero
            self.pid, self.step, self.base_cpu, self.last_cpu, self.rows_in = os.getpid(), None, 0.0, 0.0, {}
            self.gpu, self.gpu_step = None, None  # a sampler thread does not survive a fork

    def _gpu(self, step: str) -> GpuSampler:
        if self.gpu is None:
            self.gpu = GpuSampler()
            self.gpu.start()
        if step != self.gpu_step:
            self.gpu.reset()
            self.gpu_step = step
        return self.gpu

    def reset(self) -> None:
        """Count from now: call before running steps in this process (the in-process executor), so the
        first step is not charged the imports and set-up that came before it."""
        self.step, self.base_cpu, self.last_cpu, self.rows_in = None, cpu_seconds(), cpu_seconds(), {}
        self.gpu_step = None

    def read(self, step: str, rows: int) -> None:
        """A step loaded an input of ``rows`` rows."""
        self._sync()
        self._gpu(step)
        self.rows_in[step] = self.rows_in.get(step, 0) + int(rows)

    def measure(self, step: str, rows_out: int | None) -> dict[str, float | int]:
        """The step's figures so far, when it stores an output (several outputs: cumulative)."""
        self._sync()
        now = cpu_seconds()
        if step != self.step:
            self.step, self.base_cpu = step, self.last_cpu
        self.last_cpu = now
        out: dict[str, float | int] = {CPU_KEY: round(now - self.base_cpu, 3), RSS_KEY: round(peak_rss_mib(), 1),
                                       ROWS_IN_KEY: int(self.rows_in.get(step, 0))}
        threads = os_threads()
        if threads is not None:
            out[THREADS_KEY] = threads
        if rows_out is not None:
            out[ROWS_OUT_KEY] = int(rows_out)
        gpu = self._gpu(step)
        gpu.sample()
        out.update(gpu.figures())
        return out


METER = StepMeter()


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateCard:
    """What compute costs. The defaults are illustrative examples (roughly an on-demand cloud
    general-purpose VM in 2026), not truths: set your own."""

    core_hour: float = 0.048
    gib_hour: float = 0.0065
    gpu_hour: float = 2.5
    currency: str = "USD"

    def __post_init__(self) -> None:
        for name in ("core_hour", "gib_hour", "gpu_hour"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"rate card {name} must be a finite number >= 0, got {value!r}")


@dataclass
class StepFigures:
    step: str
    wall_s: float
    status: str
    start: float
    cpu_s: float | None = None
    peak_rss_mib: float | None = None
    threads: int | None = None
    rows_in: int | None = None
    rows_out: int | None = None
    trials: int | None = None
    pid: int | None = None  # the process that ran the step
    gpu_utilization_pct: float | None = None  # None: no GPU seen (not 0 %)
    gpu_memory_peak_mib: float | None = None
    gpus: int | None = None

    def cost(self, rates: RateCard) -> float | None:
        """CPU used plus memory held for the step's wall, plus the GPUs for the wall when the step's
        process held GPU memory (a CUDA context holds the device whether or not it computes)."""
        if self.cpu_s is None:
            return None
        memory = (self.peak_rss_mib or 0.0) / 1024.0 * self.wall_s / 3600.0 * rates.gib_hour
        gpu = (self.gpus or 0) * self.wall_s / 3600.0 * rates.gpu_hour if (self.gpu_memory_peak_mib or 0) > 0 else 0.0
        return self.cpu_s / 3600.0 * rates.core_hour + memory + gpu

    def as_dict(self, rates: RateCard) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "start"}
        cost = self.cost(rates)
        if cost is not None:
            out["cost"] = round(cost, 6)
        if self.rows_in and self.wall_s > 0:
            out["rows_per_s"] = round(self.rows_in / self.wall_s, 1)
        if self.trials and self.wall_s > 0:
            out["trials_per_s"] = round(self.trials / self.wall_s, 4)
        return out


def run_report(run_id: str, steps: list[StepFigures], cores: int, rates: RateCard | None = None) -> dict:
    """Per-step figures and run totals. ``wall_s`` is first step start to last step end; the cores
    are held for all of it, so ``cost_total`` adds the idle cores' share to the steps' costs."""
    rates = rates or RateCard()
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    if not steps:
        raise ValueError(f"run {run_id} has no finished step")
    start = min(s.start for s in steps)
    wall = max(s.start + s.wall_s for s in steps) - start
    metered = [s for s in steps if s.cpu_s is not None]
    cpu = sum(s.cpu_s for s in metered) if metered else None  # None: a run from before the metering
    utilization = cpu / (wall * cores) if cpu is not None and wall > 0 else None
    cost_total = None
    if cpu is not None:
        idle_core_s = max(0.0, wall * cores - cpu)
        cost_total = sum(s.cost(rates) for s in metered) + idle_core_s / 3600.0 * rates.core_hour
    peaks = [s.peak_rss_mib for s in steps if s.peak_rss_mib is not None]
    rows = []
    for s in sorted(steps, key=lambda s: s.start):
        row = s.as_dict(rates)
        row["start_offset_s"] = round(s.start - start, 3)
        rows.append(row)
    return {
        "run_id": run_id,
        "wall_s": round(wall, 2),
        "cores": cores,
        "cpu_s": None if cpu is None else round(cpu, 2),
        "cpu_utilization": None if utilization is None else round(utilization, 4),
        "idle_share": None if utilization is None else round(1.0 - utilization, 4),
        "step_wall_sum_s": round(sum(s.wall_s for s in steps), 2),
        "peak_rss_mib": max(peaks) if peaks else None,
        "cost_total": None if cost_total is None else round(cost_total, 6),
        "currency": rates.currency,
        "rate_card": asdict(rates),
        "steps": rows,
        "measured_at": time.time(),
    }


def success_rate(outcomes: list[bool]) -> float | None:
    """Share of runs whose training succeeded (None with no run)."""
    return sum(outcomes) / len(outcomes) if outcomes else None


def regressions(latest: dict[str, float], history: dict[str, list[float]], factor: float = 1.5, runs: int = 5,
                min_wall_s: float = 2.0) -> list[dict]:
    """Steps of the latest run slower than ``factor`` x their median wall over the ``runs`` earlier runs
    (newest first in ``history``) that ran them; steps under ``min_wall_s`` are noise and skipped, and
    a step needs at least 2 earlier walls to have a median worth comparing with."""
    if factor <= 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    out = []
    for step, wall in latest.items():
        earlier = history.get(step, [])[:runs]
        if len(earlier) < 2 or wall < min_wall_s:
            continue
        median = float(statistics.median(earlier))
        if median > 0 and wall > factor * median:
            out.append({"step": step, "wall_s": round(wall, 2), "median_s": round(median, 2),
                        "ratio": round(wall / median, 2), "runs": len(earlier)})
    return sorted(out, key=lambda r: -r["ratio"])


def gantt_png(steps: list[dict], title: str) -> bytes:
    """Timeline of the steps (``start_offset_s``, ``wall_s``), one bar per step, in start order."""
    from plml_assets.lib.plots import plt, to_png

    ordered = sorted(steps, key=lambda s: s["start_offset_s"])
    fig, ax = plt.subplots(figsize=(9, max(3, 0.22 * len(ordered))))
    for i, s in enumerate(ordered):
        ax.barh(i, s["wall_s"], left=s["start_offset_s"], color="tab:red" if s.get("status") == "failure" else "tab:blue")
    ax.set_yticks(range(len(ordered)), [s["step"] for s in ordered], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run's first step")
    ax.set_title(title)
    return to_png(fig)


def trend_png(trend: list[dict]) -> bytes:
    """Wall and CPU seconds of the last runs, oldest left."""
    from plml_assets.lib.plots import plt, to_png

    runs = list(reversed(trend))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = range(len(runs))
    ax.plot(x, [r["wall_s"] for r in runs], marker="o", label="wall s")
    ax.plot(x, [r["cpu_s"] if r["cpu_s"] is not None else float("nan") for r in runs], marker="s", label="CPU s")
    ax.set_xticks(list(x), [r["run_id"][:8] for r in runs], rotation=45, fontsize=7)
    ax.set_ylabel("seconds")
    ax.legend()
    ax.set_title("runs, oldest to newest")
    return to_png(fig)


def family_costs(steps: list[dict], families: list[str], cv_gain: dict[str, float], baseline: str = "momentum_20d") -> list[dict]:
    """What each model family cost in this run (its own steps: ``<family>_...``) next to what it gained:
    its walk-forward CV rank IC over the baseline's (``cv_gain``), as cost per 0.01 of gain and as
    shares of the families' total cost and total positive gain, with a sentence saying so."""
    rows = []
    for family in families:
        mine = [s for s in steps if s["step"].startswith(f"{family}_") and s.get("cost") is not None]
        cost = sum(s["cost"] for s in mine)
        wall = sum(s["wall_s"] for s in mine)
        rows.append({"family": family, "steps": len(mine), "wall_s": round(wall, 2), "cost": round(cost, 6),
                     "cv_gain_over_" + baseline: cv_gain.get(family)})
    total_cost = sum(r["cost"] for r in rows)
    gains = {r["family"]: r["cv_gain_over_" + baseline] for r in rows}
    total_gain = sum(g for g in gains.values() if g is not None and g > 0)
    for r in rows:
        gain = gains[r["family"]]
        r["cost_share"] = round(r["cost"] / total_cost, 4) if total_cost > 0 else None
        r["gain_share"] = round(max(gain, 0.0) / total_gain, 4) if gain is not None and total_gain > 0 else None
        r["cost_per_0.01_rank_ic"] = round(r["cost"] / (gain / 0.01), 6) if gain is not None and gain > 0 else None
        if gain is not None and gain <= 0:
            r["recommendation"] = f"{r['family']}: no CV gain over {baseline} for {r['cost_share'] or 0:.0%} of cost"
        elif r["cost_share"] is not None and r["gain_share"] is not None:
            r["recommendation"] = (f"{r['family']}: {r['gain_share']:.0%} of CV gain for {r['cost_share']:.0%} of cost"
                                   + ("; consider a smaller budget" if r["cost_share"] > 2 * r["gain_share"] else ""))
    return rows
