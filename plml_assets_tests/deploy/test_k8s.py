"""The Kubernetes path, tested the way dagster-k8s tests its own: no cluster can run here, so the
manifests under deploy/ and the Jobs Dagster would create are rendered and validated against the
Kubernetes schema (kubernetes-validate, API 1.37), each heavy step's ``dagster-k8s/config`` tag is
parsed by dagster-k8s itself, and the K8sRunLauncher launches a real run of plml_main against a stubbed
batch API (the one mock: there is no API server here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from plml_assets.defs.shared import FAMILIES, FAMILY_KINDS, GPU_FAMILIES, K8S_SIZED_KINDS, STEP_PRIORITY
from plml_assets.lib.deploy import k8s as sizing

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.37.0"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
_API = kubernetes.client.ApiClient()


def _validate(doc: dict) -> None:
    """Raises kubernetes_validate.ValidationError naming the field when ``doc`` is not a valid resource."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _as_dict(model) -> dict:
    return _API.sanitize_for_serialization(model)


# ---- manifests under deploy/ ------------------------------------------------------------------
def test_there_are_manifests_for_mlflow_minio_optuna_workers_and_the_auth_proxy():
    kinds = {(d["kind"], d["metadata"]["name"]) for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d}
    assert {("Deployment", "mlflow"), ("Service", "mlflow"), ("StatefulSet", "minio"), ("Job", "plml-optuna-workers"),
            ("NetworkPolicy", "dagster-webserver-only-via-auth-proxy"), ("Deployment", "oauth2-proxy"),
            ("PersistentVolumeClaim", "plml-assets"), ("NetworkPolicy", "mlflow-and-minio-only-from-plml")} <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_a_valid_kubernetes_resource(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        _validate(doc)


def test_the_validator_rejects_a_misspelt_field():
    """The check above can fail: a typo in a pod spec is refused, naming the field."""
    doc = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "mlflow.yaml").read_text()) if d["kind"] == "Deployment")
    doc["spec"]["template"]["spec"]["containers"][0]["resource"] = doc["spec"]["template"]["spec"]["containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        _validate(doc)


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec") or {}
    return pod.get("containers", []) + pod.get("initContainers", [])


def _without_comments(path: Path) -> str:
    """The YAML content of ``path`` (comments may show placeholders like USER:PASSWORD)."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CLIENT_ID|STORE_URI|STORAGE", re.I)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_credentials_come_from_secrets_never_from_the_file(path):
    for doc in yaml.safe_load_all(path.read_text()):
        assert doc and doc["kind"] != "Secret", f"{path.name}: a Secret with values does not belong in the repository"
        for container in _containers(doc):
            for env in container.get("env", []):
                if SECRETISH.search(env["name"]):
                    assert "valueFrom" in env and "value" not in env, f"{path.name}: {env['name']} is written in the file"
    assert not re.search(r"://[^/\s:@]+:[^@\s]+@", _without_comments(path)), f"{path.name}: a URL with a password"


# ---- Helm values ------------------------------------------------------------------------------
VALUES = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def test_helm_values_use_the_k8s_run_launcher_an_external_postgresql_and_the_plml_image():
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    assert VALUES["postgresql"]["enabled"] is False and VALUES["postgresql"]["postgresqlHost"]
    assert VALUES["global"]["postgresqlSecretName"] and VALUES["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in VALUES["postgresql"]  # the password is only in the Secret
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "plml_assets.definitions"]
    assert {"name": "PLML_EXECUTOR", "value": "k8s"} in deployment["env"]
    coordinator = VALUES["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    assert coordinator["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] >= 1
    for component in ("dagsterWebserver", "dagsterDaemon"):
        assert VALUES[component]["resources"]["requests"] and VALUES[component]["resources"]["limits"]
    text = _without_comments(DEPLOY / "helm" / "values.yaml")
    assert not re.search(r"(?i)password:\s*\S", text) and not re.search(r"://[^/\s:@]+:[^@\s]+@", text)


def _pod(spec: dict, container: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
            "spec": {**spec, "containers": [{"name": "c", "image": "registry.example.com/plml:0.1.0", **container}]}}


def test_the_kubernetes_pieces_of_the_helm_values_are_valid_kubernetes():
    """The chart copies these blocks into its pods and Jobs verbatim: each must be valid there."""
    launcher = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    run = launcher["runK8sConfig"]
    _validate(_pod({**run["podSpecConfig"], "volumes": launcher["volumes"]},
                   {**run["containerConfig"], "volumeMounts": launcher["volumeMounts"]}))
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"},
           "spec": {**run["jobSpecConfig"], "template": {"spec": {**_pod({}, {})["spec"], "restartPolicy": "Never"}}}}
    _validate(job)
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    _validate(_pod({"volumes": deployment["volumes"]},
                   {"env": deployment["env"], "resources": deployment["resources"], "volumeMounts": deployment["volumeMounts"]}))
    for component in ("dagsterWebserver", "dagsterDaemon"):
        _validate(_pod({}, {"resources": VALUES[component]["resources"]}))


def test_the_health_sidecar_probes_plml_serve_health_on_valid_kubernetes():
    """Issue 18 item 7: the user deployment's sidecar runs `plml serve-health`; liveness on /healthz,
    readiness on /readyz without the champion (a code location runs before any model is registered);
    the pod with the sidecar is valid Kubernetes and the password comes from Secrets."""
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    (sidecar,) = deployment["sidecarContainers"]
    assert sidecar["command"][2:5] == ["plml", "serve-health", "--host"] and "0.0.0.0" in sidecar["command"]
    port = int(sidecar["command"][sidecar["command"].index("--port") + 1])
    assert sidecar["ports"] == [{"name": "health", "containerPort": port}]
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz?skip=champion", "port": "health"}
    # the probe waits longer than the server's own per-check timeout (5 s each, four components)
    assert sidecar["readinessProbe"]["timeoutSeconds"] > 4 * 5
    secret_env = [e for e in sidecar["env"] if "valueFrom" in e]
    assert all("secretKeyRef" in e["valueFrom"] for e in secret_env) and not any("PASSWORD" in e["name"] and "value" in e for e in sidecar["env"])
    mounted = {m["name"] for m in sidecar["volumeMounts"]}
    assert mounted <= {v["name"] for v in deployment["volumes"]}
    pod = _pod({"volumes": deployment["volumes"]}, {"env": deployment["env"]})
    pod["spec"]["containers"].append(sidecar)
    _validate(pod)  # (the routes themselves: plml_assets_tests/e2e/test_health.py)


def test_the_helm_port_is_the_one_the_image_exposes():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    assert f"EXPOSE {deployment['port']}" in dockerfile
    assert "-c deploy/constraints.txt" in dockerfile and "ARG TORCH_INDEX" in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)  # the code server does not run as root
    assert '"-m", "plml_assets.definitions"' in dockerfile


# ---- each heavy step's dagster-k8s/config tag ------------------------------------------------
@pytest.fixture(scope="module")
def plan_tags():
    from plml_assets.definitions import main_job

    job = main_job()
    return {node.name: node.definition.tags for node in job.graph.nodes}


def _heavy_steps() -> list[tuple[str, bool]]:
    steps = []
    for kind in K8S_SIZED_KINDS:
        if kind in FAMILY_KINDS:
            steps += [(f"{f}_{kind}", f in GPU_FAMILIES) for f in FAMILIES]
        else:
            steps.append((kind, False))
    return steps


def test_every_heavy_step_carries_kubernetes_resources_and_the_nets_a_gpu(plan_tags):
    assert set(K8S_SIZED_KINDS) <= set(STEP_PRIORITY)
    for step, gpu in _heavy_steps():
        config = get_user_defined_k8s_config(plan_tags[step])  # dagster-k8s's own parser of the tag
        resources = config.container_config["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], step
        assert (resources["limits"].get(sizing.GPU_RESOURCE) == "1") is gpu, step
        assert (config.pod_spec_config.get("node_selector") == sizing.GPU_NODE_SELECTOR) is gpu, step
    assert "dagster-k8s/config" not in plan_tags["registered_model"]  # light steps take the launcher's defaults


def _rendered_step_job(step: str, tags: dict) -> dict:
    job_config = DagsterK8sJobConfig(
        job_image="registry.example.com/plml:0.1.0", dagster_home="/opt/dagster/dagster_home",
        image_pull_policy="IfNotPresent", service_account_name="plml-dagster", instance_config_map="plml-dagster-instance",
        postgres_password_secret="plml-dagster-postgresql", env_secrets=["plml-stores"],
    )
    job = construct_dagster_k8s_job(
        job_config, args=["dagster", "api", "execute_step", "..."], job_name=f"dagster-step-{step.replace('_', '-')}",
        user_defined_k8s_config=get_user_defined_k8s_config(tags), pod_name=f"dagster-step-{step.replace('_', '-')}",
        component="step_worker", labels={"dagster/op": step},
    )
    return _as_dict(job)


def test_the_job_of_every_heavy_step_renders_to_a_valid_kubernetes_job(plan_tags):
    for step, gpu in _heavy_steps():
        job = _rendered_step_job(step, plan_tags[step])
        _validate(job)
        pod = job["spec"]["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert (limits.get(sizing.GPU_RESOURCE) == "1") is gpu, step
        if gpu:
            assert pod["nodeSelector"] == sizing.GPU_NODE_SELECTOR and pod["tolerations"] == [sizing.GPU_TOLERATION]


# ---- sizing from measured figures --------------------------------------------------------------
def test_resources_follow_the_measured_peak_memory_and_busy_cores():
    one_core = sizing.resources_from_figures(peak_rss_mib=3000.0, cpu_s=95.0, wall_s=100.0)
    assert one_core == {"requests": {"cpu": "1", "memory": "3840Mi"}, "limits": {"cpu": "2", "memory": "5632Mi"}}
    two_cores = sizing.resources_from_figures(peak_rss_mib=100.0, cpu_s=150.0, wall_s=100.0)  # 1.5 busy cores
    assert two_cores["requests"] == {"cpu": "1500m", "memory": "512Mi"} and two_cores["limits"]["cpu"] == "3"
    assert sizing.resources_from_figures(None, None, None) == sizing.DEFAULT_RESOURCES  # never measured
    # More busy cores than the measuring machine had is the meter counting work between steps.
    assert sizing.resources_from_figures(100.0, 300.0, 100.0, cores=2)["requests"]["cpu"] == "2"
    assert sizing.resources_from_figures(100.0, 1.0, 0.33, cores=2)["requests"]["cpu"] == "1"  # a sub-second step
    for r in (one_core, two_cores):
        _validate(_pod({}, {"resources": r}))


def test_the_sizing_file_names_its_run_and_rule_and_a_bad_file_is_refused(tmp_path):
    report = {"run_id": "abc", "job": "plml_main", "cores": 2,
              "steps": [{"step": "xgboost_study", "peak_rss_mib": 2048.0, "cpu_s": 50.0, "wall_s": 100.0}]}
    made = sizing.sizing_from_report(report)
    assert made["run_id"] == "abc" and "peak RSS" in made["rule"]
    assert made["steps"]["xgboost_study"]["resources"]["requests"] == {"cpu": "500m", "memory": "2560Mi"}
    assert made["steps"]["xgboost_study"]["measured"] == {"peak_rss_mib": 2048.0, "cpu_s": 50.0, "wall_s": 100.0}
    bad = tmp_path / "k8s_resources.json"
    bad.write_text(json.dumps({"run_id": "abc"}))
    with pytest.raises(ValueError, match="no 'steps' object"):
        sizing.load_sizing(bad)
    assert sizing.load_sizing(tmp_path / "absent.json") == {"steps": {}}


# ---- executor choice ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [("k8s", "k8s"), ("in_process", "in_process"), ("multiprocess", "multiprocess"),
                                            ("", "plml_multiprocess")])
def test_plml_executor_selects_the_executor_of_the_definitions(name, expected):
    code = ("from plml_assets.definitions import defs; "
            "print(defs.resolve_job_def('plml_main').executor_def.name)")
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "PLML_EXECUTOR": name},
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expected


def test_an_unknown_executor_is_refused_naming_the_choices():
    from plml_assets.definitions import select_executor

    with pytest.raises(ValueError, match="PLML_EXECUTOR='celery'.*in_process, multiprocess, k8s"):
        select_executor("celery")
    from plml_assets.definitions import DEFAULT_EXECUTOR

    assert select_executor(None) is DEFAULT_EXECUTOR and select_executor("") is DEFAULT_EXECUTOR


# ---- the run launcher, against a stubbed batch API ---------------------------------------------
KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
  name: stub
contexts:
- context: {cluster: stub, user: stub}
  name: stub
current-context: stub
users:
- name: stub
  user: {token: not-a-real-token}
"""


def _snake(config: dict) -> dict:
    """The chart's camelCase runK8sConfig as the launcher takes it (the chart converts the same way)."""
    import re as _re

    def key(k: str) -> str:
        return _re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower()

    return {key(k): (_snake(v) if isinstance(v, dict) and k.endswith("Config") else v) for k, v in config.items()}


def test_the_k8s_run_launcher_launches_plml_main_as_a_valid_job_with_the_helm_run_config(tmp_path):
    """The K8sRunLauncher configured as deploy/helm/values.yaml configures it launches a real plml_main
    run: the Job it sends to the (stubbed) API server is valid Kubernetes, runs `dagster api
    execute_run` for this run in the plml image, takes the run pod's resources from runK8sConfig,
    and gets the instance's PostgreSQL password from the Secret, not as a value."""
    from dagster import reconstructable
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.remote_representation.handle import RepositoryHandle
    from dagster._core.test_utils import create_run_for_test, in_process_test_workspace, instance_for_test
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._utils.hosted_user_process import remote_job_from_recon_job
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.job import DAGSTER_PG_PASSWORD_ENV_VAR

    from plml_assets.definitions import main_job

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    launcher_values = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    batch_api = mock.MagicMock()  # the stub: records the Job instead of creating it
    launcher = K8sRunLauncher(
        service_account_name=VALUES["global"]["serviceAccountName"], instance_config_map="plml-dagster-instance",
        postgres_password_secret=VALUES["global"]["postgresqlSecretName"], dagster_home="/opt/dagster/dagster_home",
        job_image="registry.example.com/plml:0.1.0", load_incluster_config=False, kubeconfig_file=str(kubeconfig),
        job_namespace=launcher_values["jobNamespace"], env_secrets=[s["name"] for s in launcher_values["envSecrets"]],
        k8s_client_batch_api=batch_api, run_k8s_config=_snake(launcher_values["runK8sConfig"]),
    )
    recon = reconstructable(main_job)
    with instance_for_test() as instance:
        with in_process_test_workspace(instance, LoadableTargetOrigin(module_name="plml_assets.definitions")) as workspace:
            location = workspace.get_code_location(workspace.code_location_names[0])
            repo_def = recon.repository.get_definition()
            handle = RepositoryHandle.from_location(repository_name=repo_def.name, code_location=location)
            remote = remote_job_from_recon_job(recon, op_selection=None, repository_handle=handle)
            run = create_run_for_test(instance, job_name="plml_main", remote_job_origin=remote.get_remote_origin(),
                                      job_code_origin=recon.get_python_origin())
            launcher.register_instance(instance)
            launcher.launch_run(LaunchRunContext(run, workspace))
    (call,) = [c for c in batch_api.method_calls if c[0] == "create_namespaced_job"]
    assert call.kwargs["namespace"] == "plml"
    job = _as_dict(call.kwargs["body"])
    _validate(job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/plml:0.1.0"
    assert container["args"][:3] == ["dagster", "api", "execute_run"] and run.run_id in " ".join(container["args"])
    assert container["resources"] == launcher_values["runK8sConfig"]["containerConfig"]["resources"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400 and job["spec"]["backoffLimit"] == 0
    password = next(e for e in container["env"] if e["name"] == DAGSTER_PG_PASSWORD_ENV_VAR)
    assert password["valueFrom"]["secretKeyRef"]["name"] == VALUES["global"]["postgresqlSecretName"] and "value" not in password
    assert {"secretRef": {"name": "plml-stores"}} in container["envFrom"]


# ---- review fixes: what a cluster would have tripped on ------------------------------------------
def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 ** 2}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity) / 2**20


def test_every_measured_step_fits_under_the_memory_limit_it_gets(plan_tags):
    """A step with its own tag gets that limit; every other step (k8s_job_executor) inherits the run
    launcher's runK8sConfig. Each must hold the peak RSS measured in k8s_resources.json."""
    measured = sizing.load_sizing(ROOT / "plml_assets" / "defs" / "k8s_resources.json")["steps"]
    assert measured, "no measured sizing file"
    default = _mib(VALUES["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resources"]["limits"]["memory"])
    for step, entry in measured.items():
        peak = entry["measured"]["peak_rss_mib"]
        if peak is None or step not in plan_tags:
            continue
        tag = plan_tags[step].get(sizing.K8S_CONFIG_TAG)
        limit = _mib(json.loads(tag)["container_config"]["resources"]["limits"]["memory"]) if tag else default
        assert limit >= peak, f"{step}: limit {limit:.0f} MiB below its measured peak {peak:.0f} MiB"


def test_mlflow_answers_to_its_service_name_and_only_plml_pods_reach_it():
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "mlflow.yaml").read_text()))
    args = " ".join(next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--allowed-hosts" in args and "mlflow.plml.svc.cluster.local:5000" in args  # MLflow 3 refuses other Host headers
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {}}]}]  # this namespace's pods only


def test_optuna_worker_pods_get_distinct_worker_indices_and_keep_tini():
    (job,) = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "optuna-workers.yaml").read_text()) if d]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert job["spec"]["completionMode"] == "Indexed" and "command" not in container
    assert container["args"][-2:] == ["--worker-index", "$(JOB_COMPLETION_INDEX)"]


def test_a_cluster_without_gpus_can_turn_the_gpu_requests_off():
    code = ("import json; from plml_assets.definitions import main_job; "
            "print(json.loads(main_job().graph.node_named('lstm_study').definition.tags['dagster-k8s/config']))")
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "PLML_K8S_GPU": "0"},
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    import ast

    config = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert sizing.GPU_RESOURCE not in config["container_config"]["resources"]["limits"] and "pod_spec_config" not in config
