"""The team infrastructure files: compose set-up and the Kubernetes GPU job template.

They only run on machines we do not have in CI (Docker, a GPU cluster), so these
tests check what would otherwise fail late: secrets leaking into git, a server
exposed beyond loopback, a template Prefect would reject or render wrongly.
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.support.project import ROOT

INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
ENV_EXAMPLE = INFRA / ".env.example"
TEMPLATE = INFRA / "k8s" / "gpu-job-template.json"

# ${NAME}, ${NAME:-default}, ${NAME:?message} and the other compose forms.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|AUTH_STRING|SECRET|TOKEN|API_KEY", re.IGNORECASE)
PLACEHOLDER = re.compile(r"\{\{\s*([\w.$-]+)\s*\}\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def template() -> dict:
    return json.loads(TEMPLATE.read_text())


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def strings(obj) -> list[str]:
    """Every string value in parsed YAML (comments are gone, so only what compose reads)."""
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return [obj] if isinstance(obj, str) else []


def service_env(compose: dict, name: str) -> dict[str, str]:
    env = compose["services"][name].get("environment", {})
    assert isinstance(env, dict), f"{name}: use the mapping form of environment"
    return {k: str(v) for k, v in env.items()}


# --- compose -------------------------------------------------------------------------

def test_compose_has_the_three_services(compose):
    assert set(compose["services"]) == {"server", "postgres", "worker"}
    server = compose["services"]["server"]
    assert server["image"] == "prefecthq/prefect:3.9.1-python3.11"
    assert compose["services"]["postgres"]["image"] == "postgres:16"


def test_server_is_published_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), \
                f"{name} publishes {port!r} beyond loopback"
    assert compose["services"]["server"]["ports"] == ["127.0.0.1:4200:4200"]
    assert "postgres" not in [n for n, s in compose["services"].items() if s.get("ports")]


def test_server_waits_for_a_healthy_database_on_a_named_volume(compose):
    postgres = compose["services"]["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]
    assert compose["services"]["server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = service_env(compose, "server")["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url


def test_worker_polls_the_cpu_pool_of_the_compose_server(compose):
    worker = compose["services"]["worker"]
    assert worker["command"].split() == ["prefect", "worker", "start", "--pool", "cpu",
                                         "--type", "process"]
    assert worker["build"]["dockerfile"] == "infra/worker.Dockerfile"
    assert (INFRA / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve().is_file()
    env = service_env(compose, "worker")
    assert env["PREFECT_API_URL"] == "http://server:4200/api"
    assert env["PREFECT_API_AUTH_STRING"] == service_env(compose, "server")["PREFECT_SERVER_API_AUTH_STRING"]


def test_every_secret_comes_from_a_required_variable(compose):
    checked = 0
    for name in compose["services"]:
        for key, value in service_env(compose, name).items():
            if SECRET_NAME.search(key):
                match = INTERPOLATION.fullmatch(value)
                # `:?` and not `:-`: a default would be a literal secret in git.
                assert match and match.group(2) == ":?", f"{name}.{key} is not ${{VAR:?...}}: {value!r}"
                checked += 1
    assert checked >= 3  # the postgres password, the server's and the worker's auth string
    url = service_env(compose, "server")["PREFECT_API_DATABASE_CONNECTION_URL"]
    password = url.split("://", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]
    match = INTERPOLATION.fullmatch(password)
    assert match and match.group(1) == "POSTGRES_PASSWORD", f"literal password in the database URL: {url!r}"


def test_env_file_is_ignored_and_example_documents_every_variable(compose):
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "infra/.env must be gitignored"
    assert subprocess.run(["git", "check-ignore", "-q", "infra/.env.example"], cwd=ROOT).returncode == 1
    used = {m.group(1) for text in strings(compose) for m in INTERPOLATION.finditer(text)}
    example = env_example()
    assert used == set(example), \
        f"only in compose: {used - set(example)}, only in example: {set(example) - used}"
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert "change-me" in value, f"{key} in .env.example must be an obvious placeholder"


def test_worker_image_installs_like_make_setup():
    dockerfile = (INFRA / "worker.Dockerfile").read_text().replace("\\\n", " ")
    steps = [line for line in dockerfile.splitlines() if line.startswith(("FROM", "RUN", "COPY", "ARG"))]
    assert steps[0] == "FROM python:3.11-slim"
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.startswith(("torch==", "torchvision=="))]
    torch = next(i for i, s in enumerate(steps) if s.startswith("RUN pip install torch=="))
    assert sorted(steps[torch].split()[3:]) == sorted(pins)  # the image's torch is the pinned pair
    rest = next(i for i, s in enumerate(steps) if "pip install -c constraints.txt -e ." in s)
    assert torch < rest
    assert "git" in next(s for s in steps if "apt-get" in s)
    ignore = (INFRA / "worker.Dockerfile.dockerignore").read_text().splitlines()
    assert {"infra/.env", ".dvc/config.local", ".venv"} <= set(ignore)


def test_compose_config_resolves_with_docker(tmp_path):
    if shutil.which("docker") is None or subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed here")
    good = tmp_path / "good.env"
    good.write_text(ENV_EXAMPLE.read_text())
    empty = tmp_path / "empty.env"
    empty.write_text("")
    base = ["docker", "compose", "-f", str(COMPOSE)]
    ok = subprocess.run([*base, "--env-file", str(good), "config"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "127.0.0.1" in ok.stdout
    missing = subprocess.run([*base, "--env-file", str(empty), "config"], capture_output=True, text=True,
                             env={"PATH": shutil.which("docker").rsplit("/", 1)[0]})
    assert missing.returncode != 0 and "infra/.env" in missing.stderr


# --- Kubernetes GPU job template -----------------------------------------------------

def placeholders(obj) -> set[str]:
    return {m.group(1) for m in PLACEHOLDER.finditer(json.dumps(obj))}


def test_template_placeholders_and_variables_match(template):
    assert set(template) == {"job_configuration", "variables"}
    declared = set(template["variables"]["properties"])
    used = placeholders(template["job_configuration"])
    assert used == declared, f"undeclared: {used - declared}, unused: {declared - used}"
    standard = {"image", "namespace", "env", "labels", "name", "command", "service_account_name",
                "image_pull_policy", "finished_job_ttl", "job_watch_timeout_seconds",
                "pod_watch_timeout_seconds", "stream_output", "cluster_config"}
    assert declared == standard | {"gpu_count", "node_selector"}


def test_template_passes_prefect_validation(template):
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.schema_tools import ValidationError, is_valid_schema, validate

    validate_base_job_template(template)  # what the server runs on `work-pool create`
    is_valid_schema(template["variables"])
    validate({"gpu_count": 2, "node_selector": {"pool": "a100"}}, template["variables"], raise_on_error=True)
    with pytest.raises(ValidationError):
        validate({"gpu_count": 0}, template["variables"], raise_on_error=True)


def render(template: dict, values: dict) -> dict:
    """Render the template the way a worker does, with the fields of the Kubernetes
    worker's job configuration so the manifest survives validation."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.base import BaseJobConfiguration

    class GpuJobConfiguration(BaseJobConfiguration):
        namespace: str = "default"
        job_manifest: dict
        cluster_config: dict | None = None
        job_watch_timeout_seconds: int | None = None
        pod_watch_timeout_seconds: int = 60
        stream_output: bool = True

    # Nothing listens there: rendering must not need a server (no block or variable refs).
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        config = asyncio.run(GpuJobConfiguration.from_template_and_values(template, values))
    return config.model_dump()


def test_defaults_request_one_gpu_on_a_gpu_node(template):
    config = render(template, {})
    manifest = config["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    pod = manifest["spec"]["template"]["spec"]
    assert (pod["restartPolicy"], pod["parallelism"], pod["completions"]) == ("Never", 1, 1)
    container = pod["containers"][0]
    assert container["name"] == "prefect-job"  # the name Prefect's Kubernetes worker requires
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container["imagePullPolicy"] == "IfNotPresent"
    # Unset optional variables drop their keys rather than render empty.
    assert "ttlSecondsAfterFinished" not in manifest["spec"] and "serviceAccountName" not in pod
    assert (config["namespace"], config["pod_watch_timeout_seconds"], config["stream_output"]) == \
        ("default", 60, True)


def test_job_variables_override_gpus_node_and_image(template):
    config = render(template, {"gpu_count": 4, "node_selector": {"gpu": "a100"}, "image": "reg/slimline:gpu",
                               "namespace": "ml", "finished_job_ttl": 600,
                               "env": {"CUDA_MODULE_LOADING": "LAZY"}})
    manifest = config["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 4}
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert container["image"] == "reg/slimline:gpu"
    assert manifest["metadata"]["namespace"] == config["namespace"] == "ml"
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 600
    assert config["env"] == {"CUDA_MODULE_LOADING": "LAZY"}


def test_runs_heartbeat_and_the_crash_rule_waits_for_three_missed_beats():
    """Every deployment's runs send a heartbeat every 30 s, and the crash automation acts
    after 90 s without one: three missed beats, so one slow beat never crashes a run.
    (Prefect refuses a heartbeat more often than every 30 s.)"""
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    beats = {d["name"]: d["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]
             for d in deployments}
    assert set(beats.values()) == {"30"}, beats
    (crash,) = yaml.safe_load(
        (ROOT / "infra/automations/crash-unresponsive-runs.yaml").read_text())["automations"]
    assert crash["trigger"]["within"] == 3 * 30 and crash["trigger"]["posture"] == "Proactive"
    assert crash["actions"][0]["state"] == "CRASHED"

