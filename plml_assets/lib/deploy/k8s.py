"""Per-step Kubernetes resources (the ``dagster-k8s/config`` op tag) derived from training analytics.

A step's pod asks for what the step was measured to use, with headroom: memory from its peak RSS,
CPU from its CPU seconds over its wall seconds (how many cores it kept busy). The figures come from a
finished run's `plml analytics --json` report (``steps[*].peak_rss_mib``, ``cpu_s``, ``wall_s``);
`plml analytics --k8s-resources` writes them to ``plml_assets/defs/k8s_resources.json``, which the
asset definitions read. The recurrent nets' steps also ask for one GPU (``nvidia.com/gpu``), with a
node selector and a toleration for a GPU node pool.

No Dagster import here: the callers turn the dicts into tags.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

#: the op/run tag dagster-k8s reads a step's Kubernetes config from
K8S_CONFIG_TAG = "dagster-k8s/config"
#: memory headroom over the measured peak RSS (request), and the limit over the request
MEMORY_HEADROOM, MEMORY_LIMIT_FACTOR = 1.25, 1.5
#: smallest memory request and its granularity, MiB
MEMORY_FLOOR_MIB, MEMORY_STEP_MIB = 512, 256
#: CPU requests in half cores, at least half a core; the limit is twice the request (bursts), at least 1
CPU_STEP, CPU_FLOOR = 0.5, 0.5
#: a step shorter than this is sized at one core: its CPU over wall says little (the meter also counts
#: the work between steps: cv_splits measured 1.0 CPU s in 0.33 s of wall, "3 busy cores" on 2)
SHORT_STEP_S = 5.0
#: what a step asks for when no measured run covers it
DEFAULT_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
#: how the GPU steps find a GPU node (the names the common device plugins and cloud pools use)
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {"plml.io/accelerator": "nvidia-gpu"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _mib(value: float) -> str:
    mib = int(math.ceil(value / MEMORY_STEP_MIB) * MEMORY_STEP_MIB)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def _cores(value: float) -> str:
    cores = max(CPU_FLOOR, math.ceil(value / CPU_STEP) * CPU_STEP)
    return str(int(cores)) if cores == int(cores) else f"{int(cores * 1000)}m"


def resources_from_figures(
    peak_rss_mib: float | None, cpu_s: float | None, wall_s: float | None, cores: int | None = None,
) -> dict:
    """Kubernetes ResourceRequirements (requests and limits) for a step measured at these figures on
    a machine with ``cores`` cores (the busy cores are capped there: a step cannot have kept more
    busy; None: no cap). A step shorter than ``SHORT_STEP_S`` asks for one core."""
    if peak_rss_mib is None or not wall_s or cpu_s is None or peak_rss_mib <= 0 or wall_s <= 0:
        return json.loads(json.dumps(DEFAULT_RESOURCES))
    memory = max(MEMORY_FLOOR_MIB, peak_rss_mib * MEMORY_HEADROOM)
    busy = 1.0 if wall_s < SHORT_STEP_S else cpu_s / wall_s
    if cores:
        busy = min(busy, float(cores))
    request_cpu = max(CPU_FLOOR, math.ceil(busy / CPU_STEP) * CPU_STEP)
    return {
        "requests": {"cpu": _cores(request_cpu), "memory": _mib(memory)},
        "limits": {"cpu": _cores(max(1.0, 2 * request_cpu)), "memory": _mib(memory * MEMORY_LIMIT_FACTOR)},
    }


def sizing_from_report(report: dict) -> dict:
    """The file `plml analytics --k8s-resources` writes: per step, its resources and the figures they
    came from, and which run they were measured on."""
    steps = {}
    for s in report["steps"]:
        steps[s["step"]] = {
            "resources": resources_from_figures(s.get("peak_rss_mib"), s.get("cpu_s"), s.get("wall_s"), report.get("cores")),
            "measured": {k: s.get(k) for k in ("peak_rss_mib", "cpu_s", "wall_s")},
        }
    return {"run_id": report["run_id"], "job": report.get("job"), "cores": report.get("cores"),
            "rule": (f"memory request = max({MEMORY_FLOOR_MIB} Mi, peak RSS x {MEMORY_HEADROOM}), limit x {MEMORY_LIMIT_FACTOR}; "
                     f"CPU request = CPU s / wall s (at most the measuring machine's cores; 1 for a step under {SHORT_STEP_S:g} s) "
                     f"rounded up to {CPU_STEP} core (at least {CPU_FLOOR}), limit 2 x request (at least 1)"),
            "steps": steps}


def load_sizing(path: Path) -> dict:
    """The measured sizing file, or an empty one (every step then gets DEFAULT_RESOURCES)."""
    if not path.exists():
        return {"steps": {}}
    data = json.loads(path.read_text())
    if not isinstance(data.get("steps"), dict):
        raise ValueError(f"{path}: no 'steps' object; regenerate it with `plml analytics --k8s-resources`")
    return data


def step_k8s_config(resources: dict, gpu: bool = False) -> dict:
    """The ``dagster-k8s/config`` tag value for one step (dagster-k8s's UserDefinedDagsterK8sConfig
    keys, snake_case Kubernetes client field names)."""
    resources = json.loads(json.dumps(resources))
    pod_spec: dict = {}
    if gpu:
        resources.setdefault("limits", {})[GPU_RESOURCE] = "1"  # a quantity, as Kubernetes writes it
        pod_spec = {"node_selector": dict(GPU_NODE_SELECTOR), "tolerations": [dict(GPU_TOLERATION)]}
    out = {"container_config": {"resources": resources}}
    if pod_spec:
        out["pod_spec_config"] = pod_spec
    return out
