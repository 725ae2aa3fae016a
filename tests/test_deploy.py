"""deploy/: the docker-compose file and the Kubernetes example, tested as far as this
machine allows.

There is no Docker engine or Kubernetes here, so nothing is built or scheduled.
What is tested: every file parses; every environment variable they set is a real
setting and the whole set validates; probe paths and ports agree with
cdc_tracker/ops/health.py and the Dockerfile; the ConfigMap holds the example
rulebook at the path the daemon reads; the pod runs as the image's user. Then the
services' own commands and environments run as local processes against a local
PostgreSQL (with the compose file's init scripts applied) and fake receiver: the
compose pipeline ships calls, and of the Deployment's two replicas one is ready
while the other stands by. The ConfigMap's symlink-swap reload is tested in
tests/test_health_and_reload.py::test_configmap_style_symlink_swap_reloads.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_tracker.daemon.counters import Counters
from cdc_tracker.ops.health import HealthServer, Probe, parse_address
from cdc_tracker.rules.rulebook import load_rulebook
from cdc_tracker.settings import ENVIRONMENT, load_settings
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import EXAMPLES, sql, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"


# -- reading the files -------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(
        (DEPLOY / "docker-compose.yml").read_text()
    )
    return document


def _manifest(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return document


def _container() -> dict[str, Any]:
    containers = _manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _deployment_env() -> dict[str, str]:
    """The container's environment, secret references resolved from secret.yaml."""
    secret = _manifest("secret.yaml")
    env = {}
    for item in _container()["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        env[item["name"]] = secret["stringData"][ref["key"]]
    return env


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _exposed_port() -> int:
    match = re.search(r"^EXPOSE (\d+)$", _dockerfile(), re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def _healthcheck_url() -> httpx.URL:
    match = re.search(
        r"HEALTHCHECK[^\n]*\n(?:[^\n]*\\\n)*[^\n]*'(http://[^']+)'", _dockerfile()
    )
    assert match is not None, "the Dockerfile has no HEALTHCHECK with a URL"
    return httpx.URL(match.group(1))


def _volume_source(service: dict[str, Any], target: str) -> Path:
    for volume in service["volumes"]:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            return (DEPLOY / source).resolve()
    raise AssertionError(f"nothing mounted at {target}")


# -- the files ---------------------------------------------------------------------


def test_every_deploy_file_parses_and_kustomize_lists_every_manifest() -> None:
    files = sorted(DEPLOY.rglob("*.y*ml"))
    assert {path.name for path in files} >= {"docker-compose.yml", "deployment.yaml"}
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            assert isinstance(document, dict), path
    listed = set(_manifest("kustomization.yaml")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    for name in listed:
        assert {"apiVersion", "kind", "metadata"} <= set(_manifest(name)), name


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param(
            lambda: _compose()["services"]["cdc-tracker"]["environment"], id="compose"
        ),
        pytest.param(_deployment_env, id="kubernetes"),
    ],
)
def test_every_variable_set_is_a_setting_and_they_validate(environ: Any) -> None:
    """No typo'd variable is silently ignored: each is in settings.ENVIRONMENT, and
    the whole set loads, with a destination and a database."""
    env = {name: str(value) for name, value in environ().items()}
    assert set(env) <= set(ENVIRONMENT), set(env) - set(ENVIRONMENT)
    settings = load_settings(environ=env)
    assert settings.require_dsn()
    assert settings.destination_settings().write_key
    assert settings.rulebook == Path("/config/rulebook.yaml")
    assert parse_address(settings.metrics_address)[1] == _exposed_port()


def test_probes_match_the_health_server_and_the_dockerfile() -> None:
    """The kubelet probes the port the daemon serves, the image exposes and its
    HEALTHCHECK uses; /healthz answers a standby, /readyz does not."""
    container = _container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    live, ready = container["livenessProbe"], container["readinessProbe"]
    metrics = parse_address(_deployment_env()["CDC_TRACKER_METRICS_ADDRESS"])[1]
    assert ports[live["httpGet"]["port"]] == ports[ready["httpGet"]["port"]] == metrics
    assert metrics == _exposed_port() == _healthcheck_url().port
    assert live["httpGet"]["path"] == _healthcheck_url().path == "/healthz"
    assert ready["httpGet"]["path"] == "/readyz"
    published = _compose()["services"]["receiver"]["ports"]
    assert f"127.0.0.1:{metrics}:{metrics}" in published

    standby = Probe(Counters(), None, active=lambda: False, stall_seconds=60)
    server = HealthServer("127.0.0.1:0", standby).start()
    try:
        url = f"http://{server.address}"
        assert httpx.get(url + live["httpGet"]["path"]).status_code == 200
        answer = httpx.get(url + ready["httpGet"]["path"])
        assert answer.status_code == 503
        assert "standing by" in answer.text
    finally:
        server.stop()


def test_configmap_holds_the_example_rulebook_where_the_daemon_reads_it(
    tmp_path: Path,
) -> None:
    """Same text as cdc_tracker/examples/rulebook.yaml; mounted as a directory
    (no subPath, which would never see updates) at CDC_TRACKER_RULEBOOK."""
    configmap = _manifest("configmap.yaml")
    text = configmap["data"]["rulebook.yaml"]
    assert text == (EXAMPLES / "rulebook.yaml").read_text()
    (tmp_path / "rulebook.yaml").write_text(text)
    assert len(load_rulebook(tmp_path / "rulebook.yaml").rules) == 5

    pod = _manifest("deployment.yaml")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in _container()["volumeMounts"] if m["name"] == volume["name"])
    assert "subPath" not in mount
    wanted = Path(_deployment_env()["CDC_TRACKER_RULEBOOK"])
    assert Path(mount["mountPath"]) / "rulebook.yaml" == wanted


def test_compose_mounts_a_rulebook_that_loads_at_the_configured_path() -> None:
    service = _compose()["services"]["cdc-tracker"]
    wanted = Path(service["environment"]["CDC_TRACKER_RULEBOOK"])
    mounted = _volume_source(service, str(wanted.parent))
    on_host = mounted / wanted.name
    # In the container only the mounted directory is there: a link out of it
    # (to the packaged example) would point at nothing.
    assert on_host.resolve().is_relative_to(mounted.resolve())
    assert load_rulebook(on_host).tables.keys() == {
        "public.merchants",
        "public.payouts",
    }


def test_pod_runs_as_the_images_user_on_a_read_only_root() -> None:
    """Two replicas, recreated (see the manifest), non-root, read-only, bounded."""
    deployment = _manifest("deployment.yaml")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    uid = re.search(r"useradd [^\n]*--uid (\d+)", _dockerfile())
    assert uid is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    security = _container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = _container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])


def test_compose_database_has_wal2json_logical_wal_and_the_example_schema() -> None:
    db = _compose()["services"]["db"]
    dockerfile = (DEPLOY / db["build"] / "Dockerfile").read_text()
    assert re.search(r"^FROM postgres:15$", dockerfile, re.MULTILINE)
    assert "postgresql-15-wal2json" in dockerfile
    assert "wal_level=logical" in db["command"]
    # The schema beside the rulebook the daemon's service mounts: editing
    # config/ for one's own tables changes both.
    init = "/docker-entrypoint-initdb.d/10-schema.sql"
    schema = _volume_source(db, init)
    service = _compose()["services"]["cdc-tracker"]
    config = _volume_source(service, "/config")
    assert schema.resolve() == (config / "schema.sql").resolve()
    assert schema.read_text() == (EXAMPLES / "schema.sql").read_text()
    for service in ("receiver", "cdc-tracker"):
        build = _compose()["services"][service]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
            ROOT / "Dockerfile"
        )


# -- the services, run here as local processes -------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _clean_environ() -> dict[str, str]:
    """This process's environment without any cdc-tracker setting."""
    return {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}


class _Process:
    """A child process whose stdout lines are collected as they come."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        self.lines.extend(self.proc.stdout)

    def stop(self) -> None:
        """SIGTERM (the daemon drains and exits), SIGKILL after 20 s."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def _process(argv: list[str], env: dict[str, str]) -> Iterator[_Process]:
    child = _Process(argv, env)
    try:
        yield child
    finally:
        child.stop()


def _init_scripts(db: dict[str, Any]) -> list[Path]:
    """The compose database's init scripts, in the order the image runs them."""
    mounted = {}
    for volume in db["volumes"]:
        source, _, rest = volume.partition(":")
        target = rest.split(":")[0]
        if target.startswith("/docker-entrypoint-initdb.d/"):
            mounted[target] = (DEPLOY / source).resolve()
    return [mounted[target] for target in sorted(mounted)]


@pytest.fixture
def compose_role_db(empty_db: str) -> Iterator[str]:
    """A database set up by the compose file's init scripts (example schema and the
    cdc_tracker role); the role is dropped afterwards."""
    scripts = _init_scripts(_compose()["services"]["db"])
    assert len(scripts) == 2
    with psycopg.connect(empty_db, autocommit=True) as conn:
        for script in scripts:
            conn.execute(script.read_text())
    try:
        yield empty_db
    finally:
        sql(empty_db, "drop owned by cdc_tracker", "drop role cdc_tracker")


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return 0


def test_compose_services_ship_calls_with_their_own_commands_and_settings(
    compose_role_db: str,
) -> None:
    """The receiver's command and the daemon's environment from the compose file,
    with only the addresses moved to this machine's loopback: the daemon connects
    as the role the init script made, ships to the receiver, and is ready."""
    services = _compose()["services"]
    receiver_port, metrics_port = _free_port(), _free_port()
    receiver = services["receiver"]
    assert receiver["entrypoint"][0] == "python"  # the image's Python
    argv = [sys.executable, *receiver["entrypoint"][1:], *receiver["command"]]
    argv[argv.index("--port") + 1] = str(receiver_port)

    env = {k: str(v) for k, v in services["cdc-tracker"]["environment"].items()}
    compose_dsn = conninfo_to_dict(env["CDC_TRACKER_DSN"])
    local = conninfo_to_dict(compose_role_db)
    env["CDC_TRACKER_DSN"] = make_conninfo(
        "",
        **{**local, "user": compose_dsn["user"], "password": compose_dsn["password"]},
    )
    url = httpx.URL(env["RUDDERSTACK_DATA_PLANE_URL"])
    assert url.host == "127.0.0.1"  # it shares the receiver's network namespace
    env["RUDDERSTACK_DATA_PLANE_URL"] = str(url.copy_with(port=receiver_port))
    env["CDC_TRACKER_METRICS_ADDRESS"] = f"127.0.0.1:{metrics_port}"
    rulebook = Path(env["CDC_TRACKER_RULEBOOK"])
    mounted = _volume_source(services["cdc-tracker"], str(rulebook.parent))
    env["CDC_TRACKER_RULEBOOK"] = str(mounted / rulebook.name)
    env["CDC_TRACKER_POLL_INTERVAL"] = "0.1"
    # Slots are per cluster: one per test database.
    env["CDC_TRACKER_SLOT"] += "_" + str(local["dbname"])

    with (
        _process(argv, _clean_environ()) as receiving,
        _process(
            [sys.executable, "-m", "cdc_tracker", *services["cdc-tracker"]["command"]],
            {**_clean_environ(), **env},
        ),
    ):
        health = f"http://127.0.0.1:{metrics_port}"
        wait_until(lambda: _get(f"{health}/readyz") == 200, 30)
        sql(
            compose_role_db,
            "insert into merchants (shop_domain) values ('a.example')",
        )
        wait_until(lambda: len(receiving.lines) >= 2, 30)
        assert _get(f"{health}/healthz") == 200
    calls = [json.loads(line) for line in receiving.lines]
    kinds = sorted((call[0], call[2]) for call in calls)
    assert kinds == [("identify", None), ("track", "Merchant Installed")]


def test_two_replicas_of_the_deployment_one_reads_the_other_stands_by(
    db: str, tmp_path: Path
) -> None:
    """Both pods' processes with the Deployment's environment and the ConfigMap's
    rulebook: both are alive, only the first is ready; stop it and the standby
    becomes ready and ships (what the kubelet's probes would see)."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "rulebook.yaml").write_text(
        _manifest("configmap.yaml")["data"]["rulebook.yaml"]
    )
    env = _deployment_env()
    dbname = conninfo_to_dict(db)["dbname"]
    with FakeRudderStack(write_keys=[env["RUDDERSTACK_WRITE_KEY"]]) as fake:
        env |= {
            "CDC_TRACKER_DSN": db,
            # Slots are per cluster: one per test database.
            "CDC_TRACKER_SLOT": f"{env['CDC_TRACKER_SLOT']}_{dbname}",
            "RUDDERSTACK_DATA_PLANE_URL": fake.url,
            "CDC_TRACKER_RULEBOOK": str(config / "rulebook.yaml"),
            "CDC_TRACKER_POLL_INTERVAL": "0.1",
        }
        ports = [_free_port(), _free_port()]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        argv = [sys.executable, "-m", "cdc_tracker", *_container()["args"]]
        first_env = {
            **_clean_environ(),
            **env,
            "CDC_TRACKER_METRICS_ADDRESS": f"127.0.0.1:{ports[0]}",
        }
        second_env = {
            **first_env,
            "CDC_TRACKER_METRICS_ADDRESS": f"127.0.0.1:{ports[1]}",
        }
        with _process(argv, first_env) as first:
            wait_until(lambda: _get(f"{urls[0]}/readyz") == 200, 30)
            with _process(argv, second_env):
                wait_until(lambda: _get(f"{urls[1]}/healthz") == 200, 30)
                assert _get(f"{urls[1]}/readyz") == 503
                first.stop()
                wait_until(lambda: _get(f"{urls[1]}/readyz") == 200, 30)
                sql(db, "insert into merchants (shop_domain) values ('a.example')")
                wait_until(lambda: len(fake.calls) >= 2, 30)
