"""Containers for the tests, run by a real engine: `docker` where a Docker engine answers, else
`podman` (what `make images` builds with; CONTAINER_ENGINE overrides both).

A container is started the way a Kubernetes pod spec says (see `pod_run_options`): its numeric
user and group, a read-only root filesystem with a tmpfs where the pod mounts an emptyDir, no
capabilities and no privilege escalation. Failures name the container and end with its logs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from typing import Self

from tests.servers import wait_until

# The tag `make images` builds (kubernetes/overlays/local runs `local`); IMAGE_TAG keeps two checkouts
# that share one machine's image store apart, for `make images` and these tests alike.
IMAGE_TAG = os.environ.get("IMAGE_TAG", "local")
VARIABLE_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# A short headless Locust run of the Locust image against the inference container (named inference-api).
LOCUST_SMOKE_ENV = {
    "API_URL": "http://inference-api:8000",
    "LOADTEST_USERS": "2",
    "LOADTEST_SPAWN_RATE": "2",
    "LOADTEST_RUN_SECONDS": "15",
    "LOADTEST_BATCH_ROWS": "20",
    "LOADTEST_POOL_ROWS": "200",
    "SLO_P95_PREDICT_MS": "10000",
    "SLO_MAX_FAILURE_RATIO": "0",
}
LOCUST_SMOKE_ARGS = ["locust", "-f", "/app/locust/locustfile.py", "--headless", "--csv", "/app/reports/stats"]


def container_engine() -> str:
    """The engine `scripts/build_images.sh` picks; AssertionError when there is none (a failure, not a skip)."""
    if os.environ.get("CONTAINER_ENGINE"):
        return os.environ["CONTAINER_ENGINE"]
    if shutil.which("docker") and subprocess.run(["docker", "info"], check=False, capture_output=True).returncode == 0:
        return "docker"
    assert shutil.which("podman"), (
        "no container engine: no Docker engine answers and podman is missing (make test installs it)"
    )
    return "podman"


def engine_run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([container_engine(), *args], check=False, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{container_engine()} {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result


def image_exists(image: str) -> bool:
    return engine_run("image", "inspect", image, check=False).returncode == 0


def unique_name(prefix: str) -> str:
    """A name no other run on this machine uses (colleagues' test runs share the engine)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class RunOptions:
    """What `engine run` needs to start a container as a pod spec does."""

    user: str  # "uid:gid"
    read_only: bool
    tmpfs: list[str]  # mount paths of the pod's emptyDirs (and volume claims)
    drop_all_capabilities: bool
    no_new_privileges: bool
    env: dict[str, str] = field(default_factory=dict)  # the manifest's literal values
    args: list[str] | None = None  # the manifest's args (None: the image's CMD)


def pod_run_options(workload: dict, container_name: str | None = None) -> RunOptions:
    """The run options a rendered workload declares for one of its containers (the first by default)."""
    spec = workload["spec"]["template"]["spec"]
    containers = spec.get("initContainers", []) + spec["containers"]
    container = next(c for c in containers if container_name in (None, c["name"]))
    pod_context, context = spec.get("securityContext", {}), container.get("securityContext", {})
    uid = context.get("runAsUser", pod_context.get("runAsUser"))
    gid = context.get("runAsGroup", pod_context.get("runAsGroup", uid))
    assert uid is not None, f"{workload['metadata']['name']}: the manifest leaves the user to the image"
    # emptyDirs, and the claims of a StatefulSet's volumeClaimTemplates (a test needs no data kept)
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v} | {
        claim["metadata"]["name"] for claim in workload["spec"].get("volumeClaimTemplates", [])
    }
    return RunOptions(
        user=f"{uid}:{gid}",
        read_only=bool(context.get("readOnlyRootFilesystem")),
        tmpfs=[m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in empty_dirs],
        drop_all_capabilities="ALL" in context.get("capabilities", {}).get("drop", []),
        no_new_privileges=context.get("allowPrivilegeEscalation") is False,
        env={
            e["name"]: e["value"]
            for e in container.get("env", [])
            if "value" in e and not VARIABLE_REFERENCE.search(e["value"])
        },
        args=container.get("args"),
    )


class Container:
    """One container, started detached on `network` (reachable there as `alias`), its `port` published on 127.0.0.1."""

    def __init__(
        self,
        image: str,
        options: RunOptions,
        network: str,
        alias: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        volumes: list[str] | None = None,
        args: list[str] | None = None,
    ):
        self.image, self.options, self.network, self.alias, self.port = image, options, network, alias, port
        self.env = {**options.env, **(env or {})}
        self.volumes = volumes or []
        self.args = args if args is not None else (options.args or [])
        self.name = unique_name(alias)

    def start(self) -> Container:
        command = [
            "run",
            "--detach",
            "--name",
            self.name,
            "--network",
            self.network,
            "--network-alias",
            self.alias,
            "--user",
            self.options.user,
        ]
        if self.options.read_only:
            command += ["--read-only"] + (["--read-only-tmpfs=false"] if container_engine() == "podman" else [])
        for path in self.options.tmpfs:  # an emptyDir: writable by the pod's user, exec allowed, as in Kubernetes
            # podman gives a tmpfs over a folder of the image that folder's mode and owner, not `mode`:
            # `U` hands it to the container's user instead.
            owner = ",U" if container_engine() == "podman" else ""
            command += ["--tmpfs", f"{path}:rw,exec,size=2g,mode=1777{owner}"]
        if self.options.drop_all_capabilities:
            command += ["--cap-drop", "ALL"]
        if self.options.no_new_privileges:
            command += ["--security-opt", "no-new-privileges"]
        if self.port:
            command += ["--publish", f"127.0.0.1::{self.port}"]
        for name, value in self.env.items():
            command += ["--env", f"{name}={value}"]
        for volume in self.volumes:
            command += ["--volume", volume]
        engine_run(*command, self.image, *self.args)
        return self

    @property
    def url(self) -> str:
        """http://127.0.0.1:<published port> of `port`."""
        output = engine_run("port", self.name, f"{self.port}/tcp").stdout.strip().splitlines()[0]
        return "http://" + output.replace("0.0.0.0", "127.0.0.1")

    def logs(self) -> str:
        result = engine_run("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-5000:]

    def state(self) -> dict:
        return json.loads(engine_run("inspect", "--format", "{{json .State}}", self.name).stdout)

    def exec(self, *argv: str) -> subprocess.CompletedProcess:
        return engine_run("exec", self.name, *argv, check=False, timeout=60)

    def fail(self, message: str):
        raise AssertionError(f"{message} ({self.alias}, container {self.name})\n--- its logs ---\n{self.logs()}")

    def _running(self) -> None:
        state = self.state()
        if not state.get("Running"):
            self.fail(f"the container exited with {state.get('ExitCode')}")

    def passes_healthcheck(self) -> bool:
        """Whether the image's own HEALTHCHECK succeeds now, run inside the container by the engine."""
        self._running()
        if container_engine() == "podman":
            return engine_run("healthcheck", "run", self.name, check=False, timeout=60).returncode == 0
        return self.state().get("Health", {}).get("Status") == "healthy"

    def wait_healthy(self, timeout: float) -> Container:
        try:
            wait_until(self.passes_healthcheck, timeout=timeout, interval=2, what="its HEALTHCHECK")
        except TimeoutError as exc:
            self.fail(str(exc))
        return self

    def wait_until(self, check, timeout: float, what: str) -> Container:
        """Poll `check()` while the container runs; fail with its logs when it exits or time runs out."""

        def running_check():
            self._running()
            return check()

        try:
            wait_until(running_check, timeout=timeout, interval=2, what=what)
        except TimeoutError as exc:
            self.fail(str(exc))
        return self

    def wait_exit(self, timeout: float) -> int:
        return int(engine_run("wait", self.name, timeout=timeout).stdout.strip().splitlines()[-1])

    def remove(self) -> None:
        engine_run("rm", "--force", "--volumes", self.name, check=False)


class Network:
    """A user network of its own, where containers find each other by alias (the dnsname plugin with podman)."""

    def __init__(self):
        self.name = unique_name("readmission-test")

    def __enter__(self) -> Self:
        engine_run("network", "create", self.name)
        return self

    def __exit__(self, *exc) -> None:
        engine_run("network", "rm", "--force", self.name, check=False)
