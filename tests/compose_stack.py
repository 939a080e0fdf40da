"""docker-compose.yaml brought up for real by podman-compose, with the test-only override
tests/containers/compose.test.yaml, under a project name of its own.

Two things podman-compose cannot do with Debian's podman 4.3, which the stack needs, are done here:
- health: podman runs a container's healthcheck only from a systemd timer, and these machines run
  containers without systemd. A thread runs `podman healthcheck run` for every container of the
  stack at its service's `interval`, so each container's health is what Docker's would be;
- `depends_on` conditions: podman-compose skips `service_healthy` below podman 4.6. `up` starts
  the services in rounds, each service once every dependency meets its condition (healthy,
  completed with exit code 0, or started), one `podman-compose up --no-deps` per round.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import yaml

from tests.engine import engine_run
from tests.servers import REPO_ROOT, VENV_BIN

COMPOSE_FILES = (REPO_ROOT / "docker-compose.yaml", REPO_ROOT / "tests" / "containers" / "compose.test.yaml")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def seconds(duration: str | None, default: float) -> float:
    """A compose duration (`15s`, `1m30s`) in seconds."""
    if not duration:
        return default
    factors = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(value) * factors[unit] for value, unit in DURATION.findall(str(duration)))


class ComposeStack:
    def __init__(self, project: str, env: dict[str, str], log_dir: Path):
        self.project, self.env, self.log_dir = project, env, log_dir
        self.config = yaml.safe_load(self.compose("config").stdout)
        # Services with a profile (grafana in the test override) are left out, as compose leaves them out.
        self.services = {name: s for name, s in self.config["services"].items() if not s.get("profiles")}
        self.network = self.config["networks"]["default"]["name"]
        self._last_check: dict[str, float] = {}
        self._stop = threading.Event()
        self._checker = threading.Thread(target=self._run_healthchecks, daemon=True)

    # --- podman-compose and the engine ------------------------------------------------------------

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        files = [argument for path in COMPOSE_FILES for argument in ("-f", str(path))]
        command = [str(VENV_BIN / "podman-compose"), "--project-name", self.project, *files, *args]
        result = subprocess.run(
            command, check=False, cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        with open(self.log_dir / "podman-compose.log", "a") as log:
            log.write(f"$ podman-compose {' '.join(args)}\n{result.stdout}\n{result.stderr}\n")
        if result.returncode != 0:
            raise AssertionError(
                f"podman-compose {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
            )
        return result

    def containers(self) -> dict[str, dict]:
        """service -> `podman ps` entry of its container, for every container of the project, running or not."""
        listed = engine_run(
            "ps", "--all", "--format", "json", "--filter", f"label=io.podman.compose.project={self.project}"
        )
        found = {}
        for entry in json.loads(listed.stdout or "[]"):
            found[entry["Labels"]["com.docker.compose.service"]] = entry
        return found

    def container(self, service: str) -> str:
        return self.containers()[service]["Names"][0]

    def inspect(self, service: str) -> dict:
        return json.loads(engine_run("inspect", self.container(service)).stdout)[0]

    def health(self, service: str) -> str | None:
        state = self.inspect(service)["State"]
        return (state.get("Health") or state.get("Healthcheck") or {}).get("Status")

    def url(self, service: str, port: int) -> str:
        published = engine_run("port", self.container(service), f"{port}/tcp").stdout.split()[0]
        return "http://" + published.replace("0.0.0.0", "127.0.0.1")

    def exec(self, service: str, *argv: str) -> subprocess.CompletedProcess:
        return engine_run("exec", self.container(service), *argv, timeout=120)

    def logs(self, service: str) -> str:
        result = engine_run("logs", self.container(service), check=False)
        return (result.stdout + result.stderr)[-4000:]

    # --- health --------------------------------------------------------------------------------------

    def start_healthchecks(self) -> None:
        self._checker.start()

    def stop_healthchecks(self) -> None:
        self._stop.set()
        if self._checker.is_alive():
            self._checker.join(timeout=120)

    def _run_healthchecks(self) -> None:
        while not self._stop.is_set():
            try:
                running = {s: c for s, c in self.containers().items() if c["State"] == "running"}
            except Exception:  # noqa: BLE001 - the engine is busy or the stack is going down; next round
                running = {}
            for service, entry in running.items():
                check = self.services.get(service, {}).get("healthcheck")
                name = entry["Names"][0]
                if not check or self._stop.is_set():
                    continue
                if time.monotonic() - self._last_check.get(name, 0) >= seconds(check.get("interval"), 30):
                    self._last_check[name] = time.monotonic()
                    try:
                        engine_run("healthcheck", "run", name, check=False, timeout=120)
                    except subprocess.TimeoutExpired:  # a hung check counts as failed, as Docker's timeout does
                        pass
            self._stop.wait(2)

    # --- up and down -------------------------------------------------------------------------------

    def condition_met(self, service: str, condition: str) -> bool:
        entry = self.containers().get(service)
        if entry is None:
            return False
        if condition == "service_completed_successfully":
            if entry["State"] == "exited" and entry["ExitCode"] != 0:
                raise AssertionError(f"{service} exited with {entry['ExitCode']}:\n{self.logs(service)}")
            return entry["State"] == "exited"
        if condition == "service_healthy":
            return self.health(service) == "healthy"
        return entry["State"] == "running"

    def with_dependencies(self, services: list[str]) -> set[str]:
        wanted, todo = set(), list(services)
        while todo:
            service = todo.pop()
            if service not in wanted:
                wanted.add(service)
                todo += list(self.services[service].get("depends_on", {}))
        return wanted

    def up(self, services: list[str] | None = None, timeout: float = 1500) -> dict[str, float]:
        """Start `services` (all by default) and what they depend on, each once its dependencies meet their
        conditions; return when every started service is healthy (or done, for a one-shot job). The seconds
        from the call until each service was healthy or done."""
        pending = self.with_dependencies(services or list(self.services))
        wanted, started, ready_after = set(pending), set(), {}
        begin, deadline = time.monotonic(), time.monotonic() + timeout
        while True:
            startable = sorted(
                s
                for s in pending
                if all(
                    self.condition_met(d, c.get("condition", "service_started"))
                    for d, c in self.services[s].get("depends_on", {}).items()
                )
            )
            if startable:
                self.compose("up", "--detach", "--no-deps", "--no-build", *startable)
                started |= set(startable)
                pending -= set(startable)
            for service in started - set(ready_after):
                one_shot = (
                    self.services[service].get("restart", "no") == "no" and "healthcheck" not in self.services[service]
                )
                condition = (
                    "service_completed_successfully"
                    if one_shot
                    else ("service_healthy" if "healthcheck" in self.services[service] else "service_started")
                )
                if self.condition_met(service, condition):
                    ready_after[service] = round(time.monotonic() - begin)
            if not pending and set(ready_after) == wanted:
                return ready_after
            if time.monotonic() > deadline:
                waiting = sorted(wanted - set(ready_after))
                logs = "\n".join(f"--- {s} ---\n{self.logs(s)}" for s in waiting if s in self.containers())
                raise AssertionError(
                    f"not healthy or done after {timeout}s: {waiting}; not started: {sorted(pending)}\n{logs}"
                )
            time.sleep(3)

    def down(self, volumes: bool = False) -> None:
        self.compose("down", *(["--volumes"] if volumes else []), timeout=600)
