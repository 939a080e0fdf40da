"""Benchmark: ingest one 15,000-row batch from the data API into MySQL, raw and clean.

Target (issue 2): fetch over HTTP, validate, clean, and the two transactional writes take
<= 1.5 s on a 2-core machine. For scale it also times a per-row `iterrows` + `executemany`
insert of the raw batch alone (about 2.8 s there).

It starts a throw-away MariaDB (the Debian binaries, as the tests do) and the real data API
(gunicorn) on DATASET_PATH, then ingests batch 2 several times, each time into fresh databases
holding batch 1: as the CLI does (`ingest.ingest_batch`, both databases written at once) and
stage after stage as the DAG's tasks do. It prints the median wall time and each stage's share,
then re-ingests the batch (a re-run, which deletes the batch's rows first).
Next to wall time it prints CPU seconds (this process, MariaDB and the data API): on a
machine shared with other work, wall time stretches with the load, CPU time much less.

    DATASET_PATH=../shared/data/diabetic_data.csv.gz .venv/bin/python benchmarks/ingest_batch.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import sqlalchemy as sa  # noqa: E402

from readmission import ingest  # noqa: E402
from readmission.config import get_settings  # noqa: E402
from readmission.sources import Batch  # noqa: E402
from readmission.storage import Storage, diabetes_raw  # noqa: E402
from readmission.validation import validate_columns  # noqa: E402
from tests.servers import MariaDB, start_data_api  # noqa: E402

BATCH_SIZE = 15_000
BATCH = 2
TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by process `pid` and its child processes (gunicorn's worker)."""
    seconds = 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    seconds += (int(fields[11]) + int(fields[12])) / TICKS
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return seconds + sum(process_cpu(int(child)) for child in children)


class Meter:
    """Wall and CPU seconds of each stage: this process (client) and the servers (MariaDB, data API)."""

    def __init__(self, server_pids: list[int]):
        self.server_pids = server_pids
        self.stages: dict[str, tuple[float, float, float]] = {}

    def _now(self) -> tuple[float, float, float]:
        return time.perf_counter(), time.process_time(), sum(process_cpu(pid) for pid in self.server_pids)

    def stage(self, name: str, function, *args):
        before = self._now()
        result = function(*args)
        self.stages[name] = tuple(after - start for after, start in zip(self._now(), before, strict=True))
        return result

    def total(self, column: int) -> float:
        return sum(values[column] for values in self.stages.values())


def timed_ingestion(storage: Storage, url: str, server_pids: list[int]) -> Meter:
    """One batch's ingestion as the CLI runs it: fetch, then `ingest.ingest_batch` (both databases at once)."""
    meter = Meter(server_pids)
    batch = meter.stage("fetch", ingest.fetch, url, BATCH)
    meter.stage("validate+clean+store", ingest.ingest_batch, storage, batch, f"data-api:{url}")
    return meter


def timed_stages(storage: Storage, url: str, server_pids: list[int]) -> Meter:
    """One batch's ingestion stage after stage, as the DAG's tasks run them (minus reading back the raw rows)."""
    meter = Meter(server_pids)
    batch = meter.stage("fetch", ingest.fetch, url, BATCH)
    meter.stage("validate columns", validate_columns, batch.rows)
    raw = meter.stage("store_raw", ingest.store_raw, storage, batch, f"data-api:{url}")
    cleaned = meter.stage("validate_and_clean", ingest.validate_and_clean, raw.rows)
    meter.stage("store_clean", ingest.store_clean, storage, batch.number, cleaned)
    return meter


def naive_raw_insert(storage: Storage, batch: Batch, server_pids: list[int]) -> Meter:
    """Insert the raw batch row by row: `iterrows` into tuples, then the driver's `executemany`."""
    table = diabetes_raw.to_metadata(sa.MetaData(), name="naive_raw")
    table.drop(storage.raw, checkfirst=True)
    table.create(storage.raw)
    columns = [*batch.rows.columns, "batch_number", "row_in_batch", "ingested_at"]
    statement = (
        f"INSERT INTO naive_raw ({', '.join(f'`{c}`' for c in columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    )
    now = time.strftime("%Y-%m-%d %H:%M:%S")

    def insert() -> None:
        rows = [(*row, BATCH, position, now) for position, (_, row) in enumerate(batch.rows.iterrows())]
        with storage.raw.begin() as conn:
            conn.connection.dbapi_connection.cursor().executemany(statement, rows)

    meter = Meter(server_pids)
    meter.stage("naive insert", insert)
    table.drop(storage.raw)
    return meter


def report(title: str, meters: list[Meter]) -> None:
    """Median wall time, and the stages (wall, client CPU, server CPU) of the median run."""
    walls = [meter.total(0) for meter in meters]
    median = meters[walls.index(statistics.median_low(walls))]
    print(
        f"{title}: median {statistics.median(walls):.3f} s wall (min {min(walls):.3f}, max {max(walls):.3f}); "
        f"median run: {median.total(1):.3f} s client CPU + {median.total(2):.3f} s server CPU"
    )
    if len(median.stages) > 1:
        for name, (wall, client, server) in median.stages.items():
            print(f"    {name:<20} {wall:6.3f} s wall   {client:6.3f} s client CPU   {server:6.3f} s server CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed ingestions of the batch (default 7)")
    args = parser.parse_args()
    dataset = get_settings().dataset_path
    if not Path(dataset).is_file():
        sys.exit(f"DATASET_PATH must point at the real data set file, got {dataset!r}")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as folder:
        mariadb = MariaDB(Path(folder) / "mariadb").start()
        server, url = start_data_api(dataset, Path(folder), batch_size=BATCH_SIZE)
        pids = [mariadb.process.pid, server.process.pid]
        try:
            storage = Storage(mariadb.url("raw_data_db"), mariadb.url("clean_data_db"))
            load = os.getloadavg()[0]
            runs: dict[str, list[Meter]] = {"at once": [], "in turn": []}
            for _ in range(args.runs):  # each on fresh databases holding batch 1, as when batch 2 arrives
                for way, timed in (("at once", timed_ingestion), ("in turn", timed_stages)):
                    storage.dispose()
                    mariadb.reset("raw_data_db", "clean_data_db")
                    storage.create_schema()
                    ingest.ingest_batch(storage, ingest.fetch(url, 1), f"data-api:{url}")
                    runs[way].append(timed(storage, url, pids))
            reruns = [timed_ingestion(storage, url, pids) for _ in range(2)]  # batch 2 again: replaces its rows
            naive = [naive_raw_insert(storage, ingest.fetch(url, BATCH), pids) for _ in range(3)]
            load = max(load, os.getloadavg()[0])
            storage.dispose()
        finally:
            server.stop()
            mariadb.stop()
    print(
        f"one {BATCH_SIZE:,}-row batch from the data API (gunicorn) into MariaDB, {os.cpu_count()} CPUs, "
        f"load average up to {load:.1f}"
    )
    report(
        f"ingestion (fetch, validate, clean, raw and clean writes at once), {args.runs} runs, target <= 1.5 s",
        runs["at once"],
    )
    report(f"the same, stage after stage as the DAG's tasks run, {args.runs} runs", runs["in turn"])
    report("re-ingestion of the same batch (its rows deleted, then written again), 2 runs", reruns)
    report("naive iterrows + executemany of the raw rows only, 3 runs, about 2.8 s on an idle 2-core machine", naive)
    ratio = statistics.median(m.total(0) for m in runs["at once"]) / statistics.median(m.total(0) for m in naive)
    print(
        f"ingestion / naive raw insert (wall): {ratio:.2f}: about {2.8 * ratio:.2f} s where the naive one takes 2.8 s"
    )


if __name__ == "__main__":
    main()
