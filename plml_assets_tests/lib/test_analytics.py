"""Training analytics (issue 14): the step meter measures the step's own CPU, and the run report's
utilization, idle share and cost follow from the figures by hand."""

from __future__ import annotations

import os
import time

import pytest

from plml_assets.lib.analytics import metering as an


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


def test_the_meter_charges_each_step_its_own_cpu_and_accumulates_over_its_outputs():
    meter = an.StepMeter()
    meter.measure("warm_up", None)
    _burn(0.3)
    first = meter.measure("a", 10)
    _burn(0.2)
    again = meter.measure("a", 5)  # a second output of the same step: cumulative
    _burn(0.1)
    other = meter.measure("b", None)
    assert first[an.CPU_KEY] == pytest.approx(0.3, abs=0.08)
    assert again[an.CPU_KEY] == pytest.approx(0.5, abs=0.1)
    assert other[an.CPU_KEY] == pytest.approx(0.1, abs=0.06)  # b starts where a's last output was
    assert first[an.ROWS_OUT_KEY] == 10 and an.ROWS_OUT_KEY not in other
    assert first[an.RSS_KEY] > 10 and first.get(an.THREADS_KEY, 1) >= 1


def test_rows_read_are_counted_per_step():
    meter = an.StepMeter()
    meter.read("a", 100)
    meter.read("a", 50)
    meter.read("b", 7)
    assert meter.measure("a", None)[an.ROWS_IN_KEY] == 150
    assert meter.measure("b", None)[an.ROWS_IN_KEY] == 7


def test_a_forked_step_process_counts_from_zero():
    meter = an.StepMeter()
    _burn(1.5)  # the parent's CPU must not be charged to the child's step
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        _burn(0.1)
        os.write(write, str(meter.measure("child_step", None)[an.CPU_KEY]).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_cpu = float(os.read(read, 100).decode())
    # the child's own 0.1 s, plus what runs in it after the fork (under `pytest --cov`, coverage
    # restarts its tracer there: about 0.5 s on a loaded 2-core machine), never the parent's 1.5 s
    assert 0.04 <= child_cpu < 1.0, child_cpu


def test_run_report_by_hand():
    rates = an.RateCard(core_hour=3.6, gib_hour=36.0)  # 0.001 per core-second, 0.01 per GiB-second
    steps = [
        an.StepFigures("a", wall_s=10.0, status="success", start=100.0, cpu_s=10.0, peak_rss_mib=1024.0, rows_in=1000),
        an.StepFigures("b", wall_s=10.0, status="success", start=100.0, cpu_s=5.0, peak_rss_mib=512.0, trials=4),
        an.StepFigures("c", wall_s=10.0, status="success", start=110.0, cpu_s=5.0, peak_rss_mib=None),
    ]
    report = an.run_report("r1", steps, cores=2, rates=rates)
    assert report["wall_s"] == 20.0 and report["cpu_s"] == 20.0 and report["step_wall_sum_s"] == 30.0
    assert report["cpu_utilization"] == pytest.approx(0.5) and report["idle_share"] == pytest.approx(0.5)
    a, b, c = report["steps"][0], report["steps"][1], report["steps"][2]
    assert a["cost"] == pytest.approx(10 * 0.001 + 1.0 * 10 * 0.01)
    assert b["cost"] == pytest.approx(5 * 0.001 + 0.5 * 10 * 0.01) and b["trials_per_s"] == pytest.approx(0.4)
    assert a["rows_per_s"] == pytest.approx(100.0)
    idle = (20 * 2 - 20) * 0.001
    assert report["cost_total"] == pytest.approx(a["cost"] + b["cost"] + c["cost"] + idle)
    assert report["peak_rss_mib"] == 1024.0


def test_a_run_without_metering_reports_absent_figures_not_zeros():
    steps = [an.StepFigures("a", wall_s=3.0, status="success", start=0.0)]
    report = an.run_report("old", steps, cores=2)
    assert report["cpu_s"] is None and report["cpu_utilization"] is None and report["cost_total"] is None
    assert "cost" not in report["steps"][0] and "cpu_s" not in report["steps"][0]


@pytest.mark.parametrize("kwargs", [{"core_hour": -1.0}, {"gib_hour": float("nan")}, {"gpu_hour": "x"}])
def test_a_bad_rate_card_is_named(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        an.RateCard(**kwargs)


def test_bad_report_input_is_refused():
    with pytest.raises(ValueError, match="cores"):
        an.run_report("r", [an.StepFigures("a", 1.0, "success", 0.0)], cores=0)
    with pytest.raises(ValueError, match="no finished step"):
        an.run_report("r", [], cores=2)
    assert an.success_rate([]) is None and an.success_rate([True, True, False, True]) == 0.75


def test_a_step_slower_than_1_5x_its_median_is_named_and_noise_is_not():
    history = {"study": [10.0, 11.0, 9.0, 10.0, 10.5, 50.0], "cv": [10.0, 10.0], "tiny": [0.5, 0.5, 0.5], "new": [9.0]}
    latest = {"study": 16.0, "cv": 14.0, "tiny": 1.9, "new": 30.0, "unseen": 100.0}
    slow = an.regressions(latest, history, factor=1.5, runs=5)
    # study: median of the 5 newest earlier walls is 10.0 (the 6th, 50 s, is beyond the window); cv at 1.4x
    # is within bounds; tiny is under 2 s; new has one earlier run; unseen none.
    assert slow == [{"step": "study", "wall_s": 16.0, "median_s": 10.0, "ratio": 1.6, "runs": 5}]
    with pytest.raises(ValueError, match="factor"):
        an.regressions(latest, history, factor=1.0)


def test_the_regression_check_warns_naming_the_step():
    from plml_assets.defs.analytics.assets import step_regression

    report = {"steps": [{"step": "cpcv_paths", "wall_s": 40.0}, {"step": "backtest", "wall_s": 20.0}],
              "step_history": {"cpcv_paths": [20.0, 21.0, 19.0], "backtest": [19.0, 21.0]}}
    result = step_regression(training_analytics=report)
    assert not result.passed and result.severity.value == "WARN"
    assert "cpcv_paths 40 s = 2.0x its median 20 s" in result.description and "backtest" not in result.description
    calm = step_regression(training_analytics={**report, "steps": [{"step": "cpcv_paths", "wall_s": 22.0}]})
    assert calm.passed and "2 steps compared" not in calm.description and "1 steps compared" in calm.description


def test_plots_are_png():
    steps = [{"step": "a", "start_offset_s": 0.0, "wall_s": 3.0, "status": "success"},
             {"step": "b", "start_offset_s": 1.0, "wall_s": 2.0, "status": "failure"}]
    assert an.gantt_png(steps, "run").startswith(b"\x89PNG")
    trend = [{"run_id": "r2" * 8, "wall_s": 10.0, "cpu_s": 15.0}, {"run_id": "r1" * 8, "wall_s": 12.0, "cpu_s": None}]
    assert an.trend_png(trend).startswith(b"\x89PNG")


def test_family_costs_set_cost_against_cv_gain():
    steps = [{"step": "xgboost_study", "wall_s": 10.0, "cost": 0.03}, {"step": "xgboost_cv", "wall_s": 2.0, "cost": 0.01},
             {"step": "lstm_study", "wall_s": 30.0, "cost": 0.06}, {"step": "backtest", "wall_s": 5.0, "cost": 0.5}]
    rows = {r["family"]: r for r in an.family_costs(steps, ["xgboost", "lstm", "gru"], {"xgboost": 0.03, "lstm": 0.01, "gru": -0.01})}
    x, l, g = rows["xgboost"], rows["lstm"], rows["gru"]
    assert x["cost"] == pytest.approx(0.04) and x["steps"] == 2 and l["cost"] == pytest.approx(0.06)
    assert x["cost_share"] == pytest.approx(0.4) and l["cost_share"] == pytest.approx(0.6)
    assert x["gain_share"] == pytest.approx(0.75) and l["gain_share"] == pytest.approx(0.25)
    assert x["cost_per_0.01_rank_ic"] == pytest.approx(0.04 / 3, abs=1e-6) and l["cost_per_0.01_rank_ic"] == pytest.approx(0.06)
    assert l["recommendation"] == "lstm: 25% of CV gain for 60% of cost; consider a smaller budget"
    assert x["recommendation"] == "xgboost: 75% of CV gain for 40% of cost"
    assert g["cost_per_0.01_rank_ic"] is None and "no CV gain" in g["recommendation"]


class _FakeNvml:
    """A stand-in for ``pynvml`` (mocked: this machine has no NVIDIA GPU or driver; the real library
    is exercised on the GPU machine by benchmarks/gpu_check.py). Two devices; this process holds
    ``mine`` MiB on device 0, another process 999 MiB on device 1; utilization follows ``util``."""

    class NVMLError(Exception):
        pass

    def __init__(self, util=(40.0, 60.0), mine=512, list_processes=True, fail_init=False):
        self.util, self.mine, self.list_processes, self.fail_init = list(util), mine, list_processes, fail_init

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("U", (), {"gpu": self.util[h]})()

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        if not self.list_processes:
            return []
        proc = type("P", (), {})
        entry = proc()
        entry.pid, entry.usedGpuMemory = (os.getpid(), self.mine * 2**20) if h == 0 else (1, 999 * 2**20)
        if self.mine == 0:  # this process is listed under another pid namespace (containers)
            entry.pid = os.getpid() + 100_000
        return [entry]

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"used": 300 * 2**20})()


def test_gpu_figures_are_the_steps_mean_utilization_and_this_processs_peak_memory():
    nvml = _FakeNvml()
    sampler = an.GpuSampler(interval_s=60, nvml=nvml)  # no background sample during the test: samples by hand
    assert sampler.start()
    nvml.util, nvml.mine = [80.0, 100.0], 2048
    sampler.sample()
    figures = sampler.figures()
    sampler.stop()
    # Only device 0 holds this process's memory: its utilization (40 then 80), its peak, one device;
    # device 1 (another process's 999 MiB, 60-100 % busy) is not this step's.
    assert figures == {an.GPU_UTIL_KEY: 60.0, an.GPU_MEM_KEY: 2048.0, an.GPUS_KEY: 1}
    sampler.reset()
    assert sampler.figures() == {}  # a new step starts from nothing


@pytest.mark.parametrize("nvml", [_FakeNvml(list_processes=False), _FakeNvml(mine=0)],
                         ids=["driver_lists_no_process", "this_pid_not_listed"])
def test_a_gpu_this_process_cannot_be_seen_on_is_unknown_not_charged(nvml):
    sampler = an.GpuSampler(interval_s=60, nvml=nvml)
    assert sampler.start()  # devices exist...
    sampler.sample()
    assert sampler.figures() == {}  # ...but nothing is attributed to this step: absent, no GPU cost
    sampler.stop()


def test_without_a_gpu_the_fields_are_absent_not_zero():
    assert not an.GpuSampler(nvml=_FakeNvml(fail_init=True)).start()
    meter = an.StepMeter()
    meter.gpu = an.GpuSampler(nvml=_FakeNvml(fail_init=True))
    meter.gpu.start()
    figures = meter.measure("a", 1)
    assert not {an.GPU_UTIL_KEY, an.GPU_MEM_KEY, an.GPUS_KEY} & set(figures)
    step = an.StepFigures(step="a", wall_s=10.0, status="success", start=0.0, cpu_s=1.0)
    assert "gpu_utilization_pct" not in step.as_dict(an.RateCard())


def test_this_machine_without_a_driver_gives_no_gpu_fields():
    real = an.GpuSampler()
    if real.start():
        real.stop()
        pytest.skip("NVML sees a GPU here: covered by benchmarks/gpu_check.py on the GPU machine")
    assert real.figures() == {}


def test_the_meter_reports_gpu_fields_per_step_and_a_gpu_step_is_charged_the_gpu_hour():
    meter = an.StepMeter()
    meter.gpu = an.GpuSampler(interval_s=60, nvml=_FakeNvml())
    meter.gpu.start()
    meter.read("lstm_model", 10)
    out = meter.measure("lstm_model", 1)
    assert out[an.GPU_UTIL_KEY] == 40.0 and out[an.GPU_MEM_KEY] == 512.0 and out[an.GPUS_KEY] == 1
    meter.gpu.stop()
    rates = an.RateCard(core_hour=1.0, gib_hour=0.0, gpu_hour=10.0)
    gpu_step = an.StepFigures(step="lstm_model", wall_s=360.0, status="success", start=0.0, cpu_s=36.0,
                              gpu_utilization_pct=50.0, gpu_memory_peak_mib=512.0, gpus=1)
    cpu_step = an.StepFigures(step="labels", wall_s=360.0, status="success", start=0.0, cpu_s=36.0)
    assert gpu_step.cost(rates) == pytest.approx(0.01 + 1.0)  # 36 CPU s at 1/h + one GPU for 0.1 h at 10/h
    assert cpu_step.cost(rates) == pytest.approx(0.01)


def test_reset_keeps_the_first_in_process_step_from_being_charged_what_came_before():
    meter = an.StepMeter()
    _burn(0.3)  # imports and set-up before the run
    meter.reset()
    _burn(0.05)
    first = meter.measure("market_prices", 1)
    assert first[an.CPU_KEY] == pytest.approx(0.05, abs=0.04)
