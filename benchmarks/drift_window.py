"""What drift measurement costs: per scored request in the inference service, and per pipeline batch.

    .venv/bin/python benchmarks/drift_window.py

Prints: the reference profile of a training split, the PSI of a 15,000-row batch (the pipeline's
batch size), and `DriftWindow.add` per single-row request (queueing only; rows are binned every
5 s) with the cost of one binning pass over a full window of 1,000 rows (DRIFT_WINDOW's default).
"""

from __future__ import annotations

import time

from readmission import drift
from readmission.dataset import synthetic_dataset
from readmission.features import INPUT_COLUMNS


def best_of(repeats: int, action) -> float:
    """The fastest of `repeats` runs of `action()`, in seconds."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    training = synthetic_dataset(20_000, seed=1)
    batch = synthetic_dataset(15_000, seed=2)
    table = batch[list(INPUT_COLUMNS)].to_numpy(dtype=object)
    profile = drift.reference_profile(training)
    print(f"reference profile of 20,000 training rows: {best_of(3, lambda: drift.reference_profile(training)):.3f} s")
    print(f"PSI of a 15,000-row batch, 11 features:    {best_of(3, lambda: drift.batch_psi(profile, batch)):.3f} s")

    window = drift.DriftWindow(profile, size=1_000)  # binned every 5 s, as in the service
    rows = [table[i : i + 1] for i in range(5_000)]
    started = time.perf_counter()
    for row in rows:
        window.add(row)
    per_request = (time.perf_counter() - started) / len(rows)
    print(f"DriftWindow.add, one row (queued):          {per_request * 1e6:.1f} us per request")

    binning = drift.DriftWindow(profile, size=1_000, interval=0)
    print(
        f"binning a full window of 1,000 rows:         {best_of(5, lambda: binning.add(table[:1_000])) * 1e3:.1f} ms "
        "(once per 5 s per worker under load)"
    )


if __name__ == "__main__":
    main()
