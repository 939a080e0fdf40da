"""Benchmark: the data API holding the whole data set stays under 300 MB resident memory.

Starts the data API under gunicorn (one worker, as deployed) on the real data set, fetches
every batch once with and without gzip, and prints the worker's peak resident memory
(VmHWM, start-up included) and the time to serve one batch each way.

    DATASET_PATH=../shared/data/diabetic_data.csv.gz .venv/bin/python benchmarks/data_api_memory.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.servers import start_data_api  # noqa: E402 - needs the repository root on sys.path

TARGET_MB = 300.0


def memory_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/<pid>/status (VmHWM: peak resident, VmRSS: resident now), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def fetch_seconds(url: str, encoding: str) -> tuple[float, int]:
    """Seconds to receive one body as sent (no client-side decompression) and its size in bytes."""
    started = time.perf_counter()
    with requests.get(url, headers={"Accept-Encoding": encoding}, stream=True, timeout=120) as response:
        response.raise_for_status()
        size = len(response.raw.read(decode_content=False))
    return time.perf_counter() - started, size


def main() -> int:
    dataset = os.environ.get("DATASET_PATH") or str(REPO_ROOT.parent / "shared/data/diabetic_data.csv.gz")
    batch_size = int(os.environ.get("BATCH_SIZE", "15000"))
    with tempfile.TemporaryDirectory() as log_dir:
        started = time.perf_counter()
        server, base_url = start_data_api(dataset, Path(log_dir), batch_size=batch_size)
        ready_seconds = time.perf_counter() - started
        try:
            worker = psutil.Process(server.process.pid).children()[0].pid
            total = requests.get(f"{base_url}/health", timeout=10).json()["total_batches"]
            timings: dict[str, list[float]] = {"gzip": [], "identity": []}
            sizes: dict[str, list[int]] = {"gzip": [], "identity": []}
            for number in range(1, total + 1):
                for encoding in timings:
                    seconds, size = fetch_seconds(f"{base_url}/get_data?batch={number}", encoding)
                    timings[encoding].append(seconds)
                    sizes[encoding].append(size)
            peak, now, master = (
                memory_mb(worker, "VmHWM"),
                memory_mb(worker, "VmRSS"),
                memory_mb(server.process.pid, "VmRSS"),
            )
        finally:
            server.stop()

    print(f"data set: {dataset}")
    print(f"batches: {total} of up to {batch_size} rows; server ready in {ready_seconds:.1f} s (gunicorn, 1 worker)")
    print(f"worker peak RSS (VmHWM, start-up included): {peak:.0f} MB; RSS after serving: {now:.0f} MB")
    print(f"gunicorn master RSS: {master:.0f} MB")
    for encoding in timings:
        print(
            f"one batch, {encoding:>8}: median {statistics.median(timings[encoding]) * 1000:.0f} ms, "
            f"max {max(timings[encoding]) * 1000:.0f} ms, median body {statistics.median(sizes[encoding]) / 1e6:.2f} MB"
        )
    verdict = "PASS" if peak < TARGET_MB else "FAIL"
    print(f"{verdict}: worker peak RSS {peak:.0f} MB (target < {TARGET_MB:.0f} MB)")
    return 0 if peak < TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
