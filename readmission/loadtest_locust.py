"""Locust's side of the load tests: the users, the two load shapes, and the SLO gate at exit.

Imported by `locust/locustfile.py` only: importing Locust patches the process with gevent.
Everything Locust-free (request pool, SLO arithmetic, summary) is `readmission.loadtest`.
The locustfile reads the settings once and calls `locust_classes(settings)`: nothing here
reads them at import.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from locust import FastHttpUser, LoadTestShape, between, constant_pacing, events, task
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import StatsEntry, calculate_response_time_percentile, diff_response_time_dicts

from readmission import loadtest
from readmission.config import Settings

JSON_HEADERS = {"Content-Type": "application/json"}
MONITOR_INTERVAL_SECONDS = 5.0  # a probe's pace, not a person's
log = logging.getLogger(__name__)


def locust_classes(
    settings: Settings,
) -> tuple[type[FastHttpUser], type[FastHttpUser], type[FastHttpUser], type[LoadTestShape]]:
    """The three users (clinician, batch system, monitor) and the load shape LOADTEST_SHAPE selects, on
    `settings`; the SLO gate is registered on Locust's quitting event. What `locust/locustfile.py` exposes."""
    if not (settings.loadtest_clinician_weight or settings.loadtest_system_weight or settings.loadtest_monitor_weight):
        raise ValueError(
            "LOADTEST_CLINICIAN_WEIGHT, LOADTEST_SYSTEM_WEIGHT and LOADTEST_MONITOR_WEIGHT are all 0: "
            "no user would send a request"
        )
    pool = loadtest.encounter_pool(settings)
    api_key = settings.api_key.get_secret_value()

    class ServiceUser(FastHttpUser):
        """A client of the inference service at API_URL (Locust's --host overrides it)."""

        abstract = True
        host = settings.api_url
        wait_time = between(0.5 * settings.loadtest_think_seconds, 1.5 * settings.loadtest_think_seconds)
        # API_KEY: the load test's own key, when the service requires keys (API_KEYS).
        default_headers = {"Authorization": f"Bearer {api_key}"} if api_key else None

    class Clinician(ServiceUser):
        """A clinician asking for one patient's readmission risk, then reading the answer."""

        weight = settings.loadtest_clinician_weight

        @task
        def predict(self) -> None:
            with self.client.post(
                loadtest.PREDICT,
                data=random.choice(pool),  # type: ignore[arg-type]  # bytes go out as they are
                headers=JSON_HEADERS,
                catch_response=True,
            ) as response:
                if response.status_code == 200 and b'"probability"' not in response.content:
                    response.failure("200 without a probability")

    class BatchSystem(ServiceUser):
        """Another hospital system scoring a few hundred encounters in one request."""

        weight = settings.loadtest_system_weight

        @task
        def predict_batch(self) -> None:
            rows = settings.loadtest_batch_rows
            body = loadtest.batch_body(pool, rows, random.Random())
            with self.client.post(
                loadtest.BATCH,
                data=body,  # type: ignore[arg-type]  # bytes go out as they are
                headers=JSON_HEADERS,
                catch_response=True,
            ) as response:
                if response.status_code == 200 and _predictions_in(response.content) != rows:
                    response.failure(f"200 without {rows} predictions")

    class Monitor(ServiceUser):
        """A liveness probe and a dashboard checking the model in service, at a low steady pace."""

        weight = settings.loadtest_monitor_weight
        wait_time = constant_pacing(MONITOR_INTERVAL_SECONDS)

        @task
        def check(self) -> None:
            for path in ("/health", "/ready", "/model"):
                self.client.get(path)

    shape = StepLoad if settings.loadtest_shape == "step" else ConstantLoad
    events.quitting.add_listener(partial(slo_gate, settings=settings))
    return Clinician, BatchSystem, Monitor, type(shape.__name__, (shape,), {"settings": settings})


def _predictions_in(content: bytes) -> int:
    """How many predictions a batch answer holds; -1 when it is not the service's batch answer."""
    try:
        return len(json.loads(content)["predictions"])
    except (ValueError, KeyError, TypeError):
        return -1


# --- measuring a window of the run ------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    """Locust's cumulative counters when a window opened; a later `measure` takes the difference."""

    users: int
    opened: float
    requests: int
    failures: int
    predict_requests: int
    predict_times: dict[int, int]

    @classmethod
    def open(cls, environment: Environment, users: int) -> _Window:
        total, predict = environment.stats.total, _predict_entry(environment)
        return cls(
            users,
            time.time(),
            total.num_requests,
            total.num_failures,
            predict.num_requests if predict else 0,
            dict(predict.response_times) if predict else {},
        )

    def measure(self, environment: Environment) -> loadtest.Measurement:
        total, predict = environment.stats.total, _predict_entry(environment)
        p95 = None
        if predict and (count := predict.num_requests - self.predict_requests):
            times = diff_response_time_dicts(predict.response_times, self.predict_times)
            p95 = calculate_response_time_percentile(times, count, 0.95)
        return loadtest.Measurement(
            self.users,
            time.time() - self.opened,
            total.num_requests - self.requests,
            total.num_failures - self.failures,
            p95,
        )


def _predict_entry(environment: Environment) -> StatsEntry | None:
    return environment.stats.entries.get((loadtest.PREDICT, "POST"))


# --- load shapes ------------------------------------------------------------------------


class ConstantLoad(LoadTestShape):
    """LOADTEST_USERS users for LOADTEST_RUN_SECONDS."""

    abstract = True  # `locust_classes` gives it its settings
    settings: ClassVar[Settings]

    def _environment(self) -> Environment:
        assert self.runner is not None, "Locust gives a shape its runner before the first tick"
        return self.runner.environment

    def tick(self) -> tuple[int, float] | None:
        if self.get_run_time() >= self.settings.loadtest_run_seconds:
            return None
        return self.settings.loadtest_users, self.settings.loadtest_spawn_rate


class StepLoad(LoadTestShape):
    """Capacity search: LOADTEST_STEP_USERS more users every LOADTEST_STEP_SECONDS until a step breaks an SLO.

    Each step is judged on its own requests only, so an early calm step cannot hide a later
    overload; the search stops at the first breaking step or past LOADTEST_MAX_USERS.
    """

    abstract = True  # `locust_classes` gives it its settings
    settings: ClassVar[Settings]

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[loadtest.Step] = []
        self._window: _Window | None = None

    def _environment(self) -> Environment:
        assert self.runner is not None, "Locust gives a shape its runner before the first tick"
        return self.runner.environment

    def tick(self) -> tuple[int, float] | None:
        settings = self.settings
        users = settings.loadtest_step_users * (int(self.get_run_time() // settings.loadtest_step_seconds) + 1)
        if self._window is None or self._window.users != users:
            if self.close_step() or users > settings.loadtest_max_users:
                return None
            self._window = _Window.open(self._environment(), users)
        return users, settings.loadtest_spawn_rate

    def close_step(self) -> bool:
        """Judge the step in progress, if any; True when it broke an SLO."""
        if self._window is None:
            return False
        measurement = self._window.measure(self._environment())
        self._window = None
        if not measurement.requests:
            return False
        step = loadtest.Step(measurement, loadtest.slo_breaches(measurement, self.settings))
        self.steps.append(step)
        log.info(
            "step of %d users: %.1f requests/s, %s",
            step.users,
            measurement.rps,
            "; ".join(map(str, step.breaches)) or "SLOs kept",
        )
        return bool(step.breaches)


# --- the SLO gate -----------------------------------------------------------------------


def _endpoint_stats(entry: StatsEntry) -> loadtest.EndpointStats:
    return loadtest.EndpointStats(
        entry.method,
        entry.name,
        entry.num_requests,
        entry.num_failures,
        entry.total_rps,
        *(entry.get_response_time_percentile(p) for p in (0.50, 0.95, 0.99)),
    )


def slo_gate(environment: Environment, settings: Settings, **_kwargs) -> None:
    """Judge the run against the SLOs, write the summary, and make a broken SLO the exit code."""
    if isinstance(environment.runner, WorkerRunner):
        return  # the master judges the aggregated figures
    stats, shape = environment.stats, environment.shape_class
    steps: list[loadtest.Step] = []
    if isinstance(shape, StepLoad):
        shape.close_step()  # a step cut short by --run-time still counts
        steps = shape.steps
    predict = _predict_entry(environment)
    users = settings.loadtest_users if not steps else max(s.users for s in steps)
    whole_run = loadtest.Measurement(
        users,
        (stats.last_request_timestamp or stats.start_time) - stats.start_time,
        stats.total.num_requests,
        stats.total.num_failures,
        predict.get_response_time_percentile(0.95) if predict else None,
    )
    endpoints = [_endpoint_stats(e) for _, e in sorted(stats.entries.items())]
    summary = loadtest.summary_markdown(settings, environment.host or settings.api_url, whole_run, endpoints, steps)
    path = settings.loadtest_report_dir / loadtest.SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary)
    log.info("summary written to %s\n%s", path, summary)
    broken = loadtest.run_breaches(settings.loadtest_shape, whole_run, steps, settings)
    environment.process_exit_code = 1 if broken else 0
