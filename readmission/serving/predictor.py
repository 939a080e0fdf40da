"""Scoring: one model call per batch, answers in plain words, and micro-batching of single requests.

A model call has a fixed cost (input checks, feature set-up) that dwarfs the cost of one
more row: scoring the single encounters that arrive together in one call is what lets a
worker answer thousands of `/predict` requests a second.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from readmission.config import Settings
from readmission.features import CodedEncounters
from readmission.serving import metrics
from readmission.serving.api_models import RISK_BANDS, RISK_LABELS
from readmission.serving.model_store import ModelStore, ServedModel


class NoModel(RuntimeError):
    """No model is loaded yet (the service answers 503)."""


def served_model(store: ModelStore) -> ServedModel:
    """The model in service, read once: a swap while a request uses it does not affect that request."""
    if (model := store.current) is None:
        raise NoModel(store.last_error or "the model is still loading")
    return model


def score(store: ModelStore, table: np.ndarray | pd.DataFrame | CodedEncounters) -> tuple[ServedModel, np.ndarray]:
    """The model in service and its probabilities for raw input rows, in one model call (counted in the metrics)."""
    model = served_model(store)
    probabilities = model.probabilities(table)
    metrics.record_predictions(probabilities, probabilities >= model.decision_threshold)
    if model.drift is not None:
        metrics.record_drift(model.drift, table)
    return model, probabilities


def answers(probabilities: Sequence[float], model: ServedModel, settings: Settings) -> list[dict[str, Any]]:
    """`RowPrediction`s as dicts of Python numbers (FastAPI cannot serialize numpy ones)."""
    bands = (settings.risk_medium_threshold, settings.risk_high_threshold)  # a band starts at its threshold
    threshold = model.decision_threshold
    return [
        {
            "prediction": int(p >= threshold),
            "probability": p,
            "risk_band": (band := RISK_BANDS[bisect_right(bands, p)]),
            "label": RISK_LABELS[band],
        }
        for p in probabilities
    ]


def answer(probability: float, model: ServedModel, settings: Settings) -> dict[str, Any]:
    """One `RowPrediction` as a dict of Python numbers."""
    return answers([probability], model, settings)[0]


class MicroBatcher:
    """Scores the single encounters that arrive together with one model call.

    The call runs on the event loop itself: it is short (about a millisecond) and a worker
    has one core anyway; while it runs, new requests queue up and form the next batch, so
    batches grow with the load instead of waiting for a timer.
    """

    def __init__(self, store: ModelStore):
        self.store = store
        self._rows: list[list[Any]] = []
        self._waiters: list[asyncio.Future] = []

    async def probability(self, row: list[Any]) -> tuple[ServedModel, float]:
        """The model in service and its probability for one raw input row."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if not self._rows:
            # Two loop turns from now: the requests read by the next socket poll are validated in the
            # turn after it and still join this batch (about twice the rows per model call under load).
            loop.call_soon(loop.call_soon, self._flush)
        self._rows.append(row)
        self._waiters.append(waiter)
        return await waiter

    def _flush(self) -> None:
        rows, waiters = self._rows, self._waiters
        self._rows, self._waiters = [], []
        try:
            model, probabilities = score(self.store, np.array(rows, dtype=object))
        except Exception as exc:  # noqa: BLE001 - every waiter gets the failure (NoModel -> 503)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter, probability in zip(waiters, probabilities.tolist(), strict=True):
            if not waiter.done():  # the client may have gone away
                waiter.set_result((model, probability))
