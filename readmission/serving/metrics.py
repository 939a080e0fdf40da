"""Prometheus metrics of the inference service, right with one worker process or several.

prometheus-client chooses its storage when first imported: with `PROMETHEUS_MULTIPROC_DIR`
set (the launcher sets it and wipes the folder before the workers start), every worker
writes its samples to files there and `/metrics` sums them over all workers. Counters and
histograms add up; gauges declare how: in-flight requests sum over live workers, the
model version is reported per live worker (`pid` label), drift is the highest over live
workers. Process metrics (CPU, memory) are added per live worker by `WorkerProcesses`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# Fine enough for p50 and p99 anywhere between 1 ms and 5 s (each bucket at most ~1.6x the previous).
LATENCY_BUCKETS = (0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
                   0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)  # fmt: skip
PROBABILITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
BATCH_ROW_BUCKETS = (1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = Counter("readmission_http_requests", "HTTP requests answered.", ["route", "method", "status"])
LATENCY = Histogram("readmission_http_request_duration_seconds", "Time to answer an HTTP request.",
                    ["route", "method"], buckets=LATENCY_BUCKETS)  # fmt: skip
KEY_REQUESTS = Counter(
    "readmission_api_key_requests",
    "Requests that presented a known API key, by key name (never the key), route and status.",
    ["key", "route", "status"],
)
IN_FLIGHT = Gauge("readmission_http_requests_in_flight", "HTTP requests being answered.", multiprocess_mode="livesum")
PREDICTIONS = Counter("readmission_predictions", "Encounters scored, by predicted class.", ["prediction"])
PROBABILITY = Histogram("readmission_prediction_probability", "Predicted probability of a readmission.",
                        buckets=PROBABILITY_BUCKETS)  # fmt: skip
BATCH_ROWS = Histogram("readmission_batch_rows", "Encounters per /predict/batch request.", buckets=BATCH_ROW_BUCKETS)
MODEL_VERSION = Gauge("readmission_model_version_info", "1 for the model version a worker serves, 0 for one it served.",
                      ["model", "version"], multiprocess_mode="liveall")  # fmt: skip
MODEL_LOAD_SECONDS = Histogram("readmission_model_load_seconds", "Time to download and deserialize a model.",
                               buckets=LOAD_BUCKETS)  # fmt: skip
MODEL_RELOADS = Counter("readmission_model_reloads", "Model load attempts: success, unchanged (same version) or "
                        "failure (the old model kept serving), by trigger.", ["outcome", "trigger"])  # fmt: skip
# Each worker measures drift over the requests it scored; the highest over live workers is exported
# (workers see random shares of the same traffic, so the max is the cautious reading, and a dead
# worker's last value does not linger).
DRIFT_PSI = Gauge("readmission_feature_drift_psi", "PSI of the last DRIFT_WINDOW encounters a worker scored against "
                  "the served model's training data, by feature (highest over live workers).", ["feature"],
                  multiprocess_mode="livemax")  # fmt: skip


def model_swapped(previous, current, load_seconds: float) -> None:
    """Record a swap from `previous` to `current` (`ModelTarget`s; previous may be None)."""
    if previous is not None:
        MODEL_VERSION.labels(previous.name, previous.version or "path").set(0)
    MODEL_VERSION.labels(current.name, current.version or "path").set(1)
    MODEL_LOAD_SECONDS.observe(load_seconds)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """`histogram.observe` for every value, in one pass: a 10,000-row batch must not cost 10,000 calls."""
    if not len(values):
        return
    bounds = np.asarray(histogram._upper_bounds)  # prometheus-client has no bulk observe; these are stable internals
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts):
        if count:
            bucket.inc(int(count))
    histogram._sum.inc(float(np.sum(values)))


def record_predictions(probabilities: np.ndarray, predictions: np.ndarray) -> None:
    """Count the predicted classes and add the probabilities to their histogram."""
    positives = int(np.count_nonzero(predictions))
    if positives:
        PREDICTIONS.labels("1").inc(positives)
    if len(predictions) - positives:
        PREDICTIONS.labels("0").inc(len(predictions) - positives)
    observe_many(PROBABILITY, probabilities)


def record_drift(window, rows) -> None:
    """Add scored raw rows to a `drift.DriftWindow` and export its PSI per feature when it was updated."""
    if window.add(rows):
        for feature, value in window.psi().items():
            DRIFT_PSI.labels(feature).set(value)


class WorkerProcesses(Collector):
    """The standard process metrics (CPU seconds, resident memory, ...) of every live worker, with a `pid` label.

    The multi-process collector only sums the workers' sample files and has no process
    metrics; the worker answering a scrape reads the others' from /proc. Live workers are the
    ones with a live-gauge file: gunicorn's child_exit hook removes a dead worker's.
    """

    def __init__(self, multiproc_dir: str):
        self.folder = Path(multiproc_dir)

    def pids(self) -> list[int]:
        return sorted({int(p.stem.rpartition("_")[2]) for p in self.folder.glob("gauge_live*_*.db")})

    def collect(self):
        families: dict[str, Metric] = {}
        for pid in self.pids():
            for family in ProcessCollector(pid=partial(int, pid), registry=None).collect():
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()


def exposition(multiproc_dir: str) -> tuple[bytes, str]:
    """The text exposition of every metric: summed over the workers' files when `multiproc_dir` is set."""
    if not multiproc_dir:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
    registry.register(WorkerProcesses(multiproc_dir))
    return generate_latest(registry), CONTENT_TYPE_LATEST
