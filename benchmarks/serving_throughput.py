"""Benchmark: the inference API's throughput, latency and memory on this machine.

Targets (issue 5), 16 connections from wrk on the same machine, production settings:
  POST /predict                      >= 1,500 requests/s with p99 <= 60 ms
  POST /predict/batch, 1,000 rows    >= 200,000 rows/s
  resident memory                    <= 400 MB per worker, model loaded

Registers the reference GradientBoosting configuration (200 trees, depth 3, learning rate
0.05) trained on synthetic encounters with a throw-away `mlflow server` (as in production,
where the API talks to the MLflow server over HTTP), starts the API with its image's
command (gunicorn, API_WORKERS uvicorn workers, one native thread each), waits
until every worker serves the model, then runs `wrk -t2 -c16` for DURATION seconds per
endpoint. Requests rotate over distinct encounters (1,000 single ones, 4 batches each of
JSON and CSV). Prints requests/s, latency percentiles, rows/s and each worker's memory.

The targets are checked on the measured figures, which fall with whatever else runs on the
machine; the requests served per worker CPU-second (and the throughput they imply on the
cores wrk leaves free) do not, and are printed too.

    .venv/bin/python benchmarks/serving_throughput.py [--duration 20] [--workers 2] [--api-keys] [--predict-only]

`--api-keys` measures the cost of key checking: a second API, the same but requiring an API key
(API_KEYS with three entries), serves the same `/predict` load with its key; the two are run in
turn, `--rounds` times each, and printed side by side.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psutil
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from readmission.config import Settings  # noqa: E402 - needs the repository root on sys.path
from readmission.dataset import synthetic_dataset  # noqa: E402
from readmission.loadtest import request_body  # noqa: E402
from readmission.serving.auth import key_hash, new_key  # noqa: E402
from tests.factories import labelled_encounters, metric  # noqa: E402
from tests.servers import MlflowServer, start_inference_api, wait_until  # noqa: E402

PREDICT_RPS, PREDICT_P99_MS, BATCH_ROWS_PER_S, WORKER_RSS_MB = 1_500, 60.0, 200_000, 400.0
BATCH_ROWS = 1_000
# Each request takes the next body of the file `bodies` (one per line), round robin.
ROTATING_BODIES = """
local bodies, i = {}, 0
for line in io.lines("%s") do bodies[#bodies + 1] = line:gsub("\\\\n", "\\n") end
wrk.method = "POST"
wrk.headers["Content-Type"] = "%s"
%s
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""


def register_reference_model(settings: Settings) -> str:
    """The reference GradientBoosting pipeline, trained on synthetic encounters, promoted to @production."""
    from sklearn.ensemble import GradientBoostingClassifier

    from readmission.model import registry
    from readmission.train import REFERENCE_PARAMS, Candidate, train_model

    classifier = GradientBoostingClassifier(**REFERENCE_PARAMS, random_state=0)
    result = train_model(
        labelled_encounters(rows=10_000), settings, [Candidate("gradient_boosting", classifier)], figures=False
    )
    version = str(registry.log_training(result, settings).version)
    registry.set_production(settings, version)
    return version


def write_script(folder: Path, name: str, bodies: list[str], content_type: str, api_key: str = "") -> Path:
    """A wrk Lua script posting `bodies` in turn (newlines inside a body are escaped in the file), with
    `api_key` as bearer token when given."""
    lines = folder / f"{name}.bodies"
    lines.write_text("\n".join(body.replace("\n", "\\n") for body in bodies) + "\n")
    script = folder / f"{name}.lua"
    authorization = f'wrk.headers["Authorization"] = "Bearer {api_key}"' if api_key else ""
    script.write_text(ROTATING_BODIES % (lines, content_type, authorization))
    return script


def milliseconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes have used so far."""
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def run_wrk(url: str, script: Path, duration: int, workers: list[int], connections: int = 16) -> dict[str, float]:
    """wrk's requests/s, latency percentiles (ms) and failures for one endpoint, and the CPU time it took.

    The CPU figures give the throughput the workers would reach on cores of their own
    (requests per worker CPU-second), whatever else the machine was running.
    """
    wrk_before, workers_before = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(workers)
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "30s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "requests": float(re.search(r"(\d+) requests in", output).group(1)),
        "worker_cpu_s": cpu_seconds(workers) - workers_before,
        "wrk_cpu_s": (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime),
    }
    for percentile in ("50", "90", "99"):
        figures[f"p{percentile}_ms"] = milliseconds(re.search(rf"^\s+{percentile}%\s+(\S+)", output, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    figures["errors"] = float(errors.group(1)) if errors else 0.0
    socket_errors = re.search(r"Socket errors: (.*)", output)
    figures["socket_errors"] = socket_errors.group(1) if socket_errors else "none"
    return figures


def request_scripts(folder: Path) -> dict[str, tuple[Path, str, int]]:
    """name -> (wrk script, path, rows per request): 1,000 distinct single encounters, 4 batches of each format."""
    rows = synthetic_dataset(5_000, seed=3)
    singles = [json.dumps(request_body(r)) for r in rows.head(1_000).to_dict(orient="records")]
    chunks = [rows.iloc[i * BATCH_ROWS : (i + 1) * BATCH_ROWS] for i in range(4)]
    as_json = [json.dumps([request_body(r) for r in chunk.to_dict(orient="records")]) for chunk in chunks]
    as_csv = [chunk.to_csv(index=False) for chunk in chunks]  # the data set's format, all 50 columns
    return {
        "POST /predict": (write_script(folder, "single", singles, "application/json"), "/predict", 1),
        "POST /predict/batch (JSON, 1,000 rows)": (
            write_script(folder, "batch_json", as_json, "application/json"),
            "/predict/batch",
            BATCH_ROWS,
        ),
        "POST /predict/batch (CSV, 1,000 rows)": (
            write_script(folder, "batch_csv", as_csv, "text/csv"),
            "/predict/batch",
            BATCH_ROWS,
        ),
    }


def resident_mb(pids: list[int]) -> dict[int, tuple[float, float]]:
    """pid -> (resident MB now, peak resident MB) from /proc/<pid>/status."""
    status = {pid: Path(f"/proc/{pid}/status").read_text() for pid in pids}
    return {
        pid: tuple(float(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024 for field in ("VmRSS", "VmHWM"))
        for pid, text in status.items()
    }


def start_api(folder: Path, mlflow_url: str, version: str, workers: int, extra: dict[str, str] | None = None):
    """The API with its image's command, once every worker serves `version`: (server, url, worker pids)."""
    api, url = start_inference_api(
        {"MLFLOW_TRACKING_URI": mlflow_url, "MODEL_POLL_SECONDS": "3600", **(extra or {})}, folder, workers=workers
    )
    wait_until(
        lambda: (
            metric(requests.get(f"{url}/metrics", timeout=10).text, "readmission_model_version_info", version=version)
            == workers
        ),
        timeout=180,
        what="every worker to load the model",
    )
    return api, url, [child.pid for child in psutil.Process(api.process.pid).children()]


def compare_keys(
    folder: Path,
    open_api: tuple[str, list[int]],
    keyed_api: tuple[str, list[int]],
    key: str,
    duration: int,
    rounds: int,
) -> dict[str, list[dict[str, float]]]:
    """`/predict` without and with key checking, `rounds` runs each, alternated; the figures of every run."""
    singles = [json.dumps(request_body(r)) for r in synthetic_dataset(1_000, seed=3).to_dict(orient="records")]
    scripts = {
        "without keys": (write_script(folder, "open", singles, "application/json"), *open_api),
        "with a key": (write_script(folder, "keyed", singles, "application/json", key), *keyed_api),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in scripts}
    for script, url, workers in scripts.values():
        run_wrk(f"{url}/predict", script, 3, workers)  # warm-up
    for _ in range(rounds):
        for name, (script, url, workers) in scripts.items():
            runs[name].append(run_wrk(f"{url}/predict", script, duration, workers))
    return runs


def key_check_microseconds(entries: str, key: str, calls: int = 200_000) -> float:
    """The check alone, in this process: hash the presented key, find its caller, check its right."""
    import timeit

    from fastapi.security import HTTPAuthorizationCredentials

    from readmission.serving.app import AccessControl

    access = AccessControl(Settings(_env_file=None, api_keys=entries))
    credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=key)
    seconds = min(timeit.repeat(lambda: access.admit(access.caller(credentials), "predict"), number=calls, repeat=3))
    return seconds / calls * 1e6


def key_route_microseconds(entries: str, key: str, calls: int = 5_000, rounds: int = 3) -> tuple[float, float]:
    """`GET /model` in-process (httpx's ASGI transport, no network, no model: a 503 after the checks) without and
    with keys: the best microseconds per request of `rounds` alternated runs each, FastAPI's dependency included."""
    import asyncio

    import httpx

    from readmission.serving.app import create_app

    async def per_request(app, headers: dict[str, str]) -> float:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            for _ in range(200):
                await client.get("/model", headers=headers)
            started = time.perf_counter()
            for _ in range(calls):
                await client.get("/model", headers=headers)
            return (time.perf_counter() - started) / calls * 1e6

    plain = create_app(Settings(_env_file=None))
    keyed = create_app(Settings(_env_file=None, api_keys=entries))
    sides: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        sides[0].append(asyncio.run(per_request(plain, {})))
        sides[1].append(asyncio.run(per_request(keyed, {"Authorization": f"Bearer {key}"})))
    return min(sides[0]), min(sides[1])


def print_key_comparison(runs: dict[str, list[dict[str, float]]]) -> None:
    for name, figures in runs.items():
        for number, f in enumerate(figures, start=1):
            print(
                f"POST /predict {name}, run {number}: {f['requests_per_s']:,.0f} requests/s, p50 {f['p50_ms']:.2f} ms, "
                f"p99 {f['p99_ms']:.2f} ms, non-2xx {f['errors']:.0f}, "
                f"{f['requests'] / f['worker_cpu_s']:,.0f} requests per worker CPU-second",
                flush=True,
            )
    (without, with_key) = ([f["requests"] / f["worker_cpu_s"] for f in runs[n]] for n in runs)
    per_request_us = (1 / (sum(with_key) / len(with_key)) - 1 / (sum(without) / len(without))) * 1e6
    print(f"key checking costs {per_request_us:+.1f} µs of worker CPU per /predict request (mean over the runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per endpoint")
    parser.add_argument("--workers", type=int, default=2, help="API_WORKERS")
    parser.add_argument("--api-keys", action="store_true", help="also compare /predict without and with an API key")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side of the key comparison")
    parser.add_argument("--predict-only", action="store_true", help="leave out the batch endpoints")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="serving-benchmark-") as scratch, ExitStack() as servers:
        folder = Path(scratch)
        mlflow_server = MlflowServer(folder / "mlflow").start()
        servers.callback(mlflow_server.stop)
        settings = Settings(_env_file=None, data_dir=folder / "client", mlflow_tracking_uri=mlflow_server.url)
        print("training and registering the reference model ...", flush=True)
        version = register_reference_model(settings)
        api, url, workers = start_api(folder, mlflow_server.url, version, args.workers)
        servers.callback(api.stop)
        loaded = resident_mb(workers)
        if args.api_keys:
            key = new_key("benchmark")[0]
            entries = ",".join([new_key("ui")[1], f"benchmark:{key_hash(key)}", new_key("batch")[1]])
            keyed, keyed_url, keyed_workers = start_api(
                folder / "keyed", mlflow_server.url, version, args.workers, {"API_KEYS": entries}
            )
            servers.callback(keyed.stop)
            key_runs = compare_keys(folder, (url, workers), (keyed_url, keyed_workers), key, args.duration, args.rounds)
            keyed.stop()
        for name, (script, path, rows_per_request) in request_scripts(folder).items():
            if args.predict_only and path != "/predict":
                continue
            run_wrk(f"{url}{path}", script, 3, workers)  # warm-up
            figures = results[name] = run_wrk(f"{url}{path}", script, args.duration, workers)
            figures["rows_per_s"] = figures["requests_per_s"] * rows_per_request
            # On the machine's cores, less the share wrk itself needs, with nothing else running.
            cores = psutil.cpu_count() - figures["wrk_cpu_s"] / args.duration
            figures["capacity_rows_per_s"] = figures["requests"] * rows_per_request / figures["worker_cpu_s"] * cores
            print(
                f"{name}: {figures['requests_per_s']:,.0f} requests/s, {figures['rows_per_s']:,.0f} rows/s, latency "
                f"p50 {figures['p50_ms']:.1f} ms, p90 {figures['p90_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, "
                f"non-2xx {figures['errors']:.0f}, socket errors {figures['socket_errors']}; "
                f"{figures['requests'] / figures['worker_cpu_s']:,.0f} requests per worker CPU-second, so "
                f"{figures['capacity_rows_per_s']:,.0f} rows/s on {cores:.2f} free cores",
                flush=True,
            )
        memory = resident_mb(workers)
    if args.api_keys:
        print_key_comparison(key_runs)
        print(f"the key check alone: {key_check_microseconds(entries, key):.2f} µs per request (in-process, best of 3)")
        without, with_key = key_route_microseconds(entries, key)
        print(
            f"GET /model in-process (503, no model): {without:.1f} µs without keys, {with_key:.1f} µs with a key: "
            f"{with_key - without:+.1f} µs for the check and its FastAPI dependency"
        )
    for pid, (resident, peak) in memory.items():
        print(
            f"worker {pid}: resident {loaded[pid][0]:.0f} MB with the model loaded, {resident:.0f} MB after the runs "
            f"(peak {peak:.0f} MB)"
        )
    single = results["POST /predict"]
    checks = {
        f"/predict >= {PREDICT_RPS:,} requests/s": single["requests_per_s"] >= PREDICT_RPS,
        f"/predict p99 <= {PREDICT_P99_MS:.0f} ms": single["p99_ms"] <= PREDICT_P99_MS,
        f"/predict/batch >= {BATCH_ROWS_PER_S:,} rows/s (best format)": max(
            (r["rows_per_s"] for n, r in results.items() if "batch" in n), default=0
        )
        >= BATCH_ROWS_PER_S,
        f"resident memory <= {WORKER_RSS_MB:.0f} MB per worker": max(r for r, _ in memory.values()) <= WORKER_RSS_MB,
        "no failed request": all(r["errors"] == 0 and r["socket_errors"] == "none" for r in results.values()),
    }
    for check, met in checks.items():
        print(f"{'met' if met else 'MISSED'}: {check}")
    print(
        f"load average after the runs: {' '.join(f'{x:.1f}' for x in psutil.getloadavg())} "
        f"on {psutil.cpu_count()} cores"
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
