"""The FastAPI inference service: `create_app(settings)` builds it, `fastapi/main.py` exposes it.

Routes: `POST /predict`, `POST /predict/batch`, `GET /health`, `GET /ready`, `GET /model`,
`POST /reload`, `GET /metrics`. The model is loaded in the background and kept fresh by
`ModelStore`; single predictions are micro-batched by `MicroBatcher`.

`/predict`, `/predict/batch` and `/model` need a bearer API key when `API_KEYS` is set (see
`readmission.serving.auth`); `/health`, `/ready` and `/metrics` stay open for probes and Prometheus.
`POST /reload` needs the bearer token `RELOAD_TOKEN`. When `RELOAD_TOKEN` is empty,
reloading over HTTP is refused (403) rather than left open to anyone: the service still
picks up a new `@production` version by itself, every `MODEL_POLL_SECONDS`. With several
worker processes, `/reload` reloads the worker that answers it; the others follow at
their next poll.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline

from readmission.config import Settings, get_settings
from readmission.explain import SCALE, NotExplainable
from readmission.features import CodedEncounters
from readmission.serving import metrics
from readmission.serving.access import AUTH_ERRORS, CAN_PREDICT, CAN_READ_MODEL, AccessControl
from readmission.serving.api_models import (
    FIELDS,
    BatchPrediction,
    Encounter,
    ErrorMessage,
    Health,
    ModelCard,
    Prediction,
    Readiness,
    ReloadResult,
    ValidationErrors,
    encounter_row,
    input_fields,
)
from readmission.serving.batch_input import (
    BatchTooLarge,
    InvalidBatch,
    bounded,
    encounters_from_csv,
    encounters_from_json,
)
from readmission.serving.model_store import ModelLoadError, ModelStore, ServedModel
from readmission.serving.predictor import MicroBatcher, NoModel, answer, answers, score, served_model
from readmission.serving.request_metrics import RequestMetrics

# --- dependencies -----------------------------------------------------------------------


async def _settings(request: Request) -> Settings:  # async: FastAPI runs plain-def dependencies in a thread
    return request.app.state.settings


async def _store(request: Request) -> ModelStore:
    return request.app.state.store


async def _batcher(request: Request) -> MicroBatcher:
    return request.app.state.batcher


async def _batch_thread(request: Request) -> ThreadPoolExecutor:
    return request.app.state.batch_thread


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[ModelStore, Depends(_store)]
BatcherDep = Annotated[MicroBatcher, Depends(_batcher)]
BatchThreadDep = Annotated[ThreadPoolExecutor, Depends(_batch_thread)]
RELOAD_SCHEME = HTTPBearer(auto_error=False, scheme_name="ReloadToken", description="The RELOAD_TOKEN setting.")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(RELOAD_SCHEME)]
log = logging.getLogger(__name__)


async def require_reload_token(settings: SettingsDep, credentials: BearerDep) -> None:
    """401 without a bearer token, 403 with a wrong one, 403 when reloading over HTTP is disabled."""
    expected = settings.reload_token.get_secret_value()
    if not expected:
        raise HTTPException(
            403,
            "reloading over HTTP is disabled because RELOAD_TOKEN is not set; the service "
            "polls MODEL_URI every MODEL_POLL_SECONDS by itself",
        )
    if credentials is None:
        raise HTTPException(401, "a bearer token (RELOAD_TOKEN) is required", headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(403, "wrong reload token")


# --- predictions ------------------------------------------------------------------------

ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    413: {"model": ErrorMessage, "description": "Body over MAX_BODY_BYTES, or more than MAX_BATCH_ROWS encounters."},
    422: {"model": ValidationErrors, "description": "Invalid input; each error names the row and field."},
    503: {"model": ErrorMessage, "description": "No model is loaded yet."},
}
EXPLAIN_ERROR = {"model": ErrorMessage, "description": "explain=true, but the model in service cannot be explained."}
CSV_EXAMPLE = (
    ",".join(FIELDS) + "\n" + ",".join(str(spec.default) if not spec.required else "1" for spec in FIELDS.values())
)
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "Up to MAX_BATCH_ROWS (default 10,000) encounters: a JSON list of `Encounter` objects, "
        "or a CSV in the data set's format (header row; encounter_id, patient_nbr and readmitted are ignored).",
        "content": {
            "application/json": {
                "schema": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Encounter"}}
            },
            "text/csv": {"schema": {"type": "string"}, "example": CSV_EXAMPLE},
        },
    }
}
BATCH_READERS: dict[str, Callable[[bytes, int], np.ndarray | CodedEncounters]] = {
    "application/json": encounters_from_json,
    "text/csv": encounters_from_csv,
}

predictions = APIRouter(tags=["predictions"], dependencies=[CAN_PREDICT])


ExplainDep = Annotated[bool, Query(description="Also list the fields that moved the risk most (`factors`).")]


def explained(model: ServedModel, table: np.ndarray | CodedEncounters) -> list[dict[str, Any]]:
    """The explanation fields of each row's answer (`api_models.Explained`); 501 for a model that cannot be explained."""
    try:
        explanation = model.explainer.explain(table)
    except NotExplainable as exc:
        raise HTTPException(501, f"the model in service cannot be explained: {exc}") from None
    return [
        {"factors": explanation.factors(row), "factors_scale": SCALE, "base_log_odds": explanation.base_value}
        for row in range(len(explanation.contributions))
    ]


@predictions.post("/predict", response_model=Prediction, responses={**ERRORS, 501: EXPLAIN_ERROR})
async def predict(
    encounter: Encounter, batcher: BatcherDep, settings: SettingsDep, explain: ExplainDep = False
) -> Prediction:
    """Readmission risk of one encounter, in the data set's raw vocabulary; with `explain=true`, why."""
    row = encounter_row(encounter)
    model, probability = await batcher.probability(row)
    extra = (await run_in_threadpool(explained, model, np.array([row], dtype=object)))[0] if explain else {}
    return Prediction(
        **answer(probability, model, settings),
        model_name=model.target.name,
        model_version=model.target.version,
        **extra,
    )


def _score_batch(
    read: Callable[[bytes, int], np.ndarray | CodedEncounters],
    body: bytes,
    store: ModelStore,
    settings: Settings,
    explain: bool = False,
) -> Response:
    """A `BatchPrediction`, encoded here, off the event loop (the route's response model documents it)."""
    table = read(body, settings.max_batch_rows)
    model, probabilities = score(store, table)
    metrics.BATCH_ROWS.observe(len(table))
    rows = answers(probabilities.tolist(), model, settings)
    if explain:
        rows = [row | extra for row, extra in zip(rows, explained(model, table), strict=True)]
    content = msgspec.json.encode(
        {
            "model_name": model.target.name,
            "model_version": model.target.version,
            "rows": len(table),
            "predictions": rows,
        }
    )
    return Response(content, media_type="application/json")


@predictions.post(
    "/predict/batch",
    response_model=BatchPrediction,
    openapi_extra=BATCH_BODY,
    responses={**ERRORS, 415: {"model": ErrorMessage, "description": "Neither JSON nor CSV."}, 501: EXPLAIN_ERROR},
)
async def predict_batch(
    request: Request, store: StoreDep, settings: SettingsDep, batch_thread: BatchThreadDep, explain: ExplainDep = False
) -> Response:
    """Readmission risk of many encounters (a JSON list or a CSV) with one model call; with `explain=true`, why."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    read = BATCH_READERS.get("application/json" if media_type.endswith("+json") else media_type)
    if read is None:
        raise HTTPException(
            415,
            f"unsupported content type {media_type or 'none'!r}: send application/json "
            "(a list of encounters) or text/csv (the data set's format)",
        )
    body = await request.body()
    # Off the event loop, so parsing and scoring thousands of rows does not stall single predictions; on one
    # thread, one batch at a time: a worker has one core, and concurrent batches would only add up their memory.
    return await asyncio.get_running_loop().run_in_executor(
        batch_thread, _score_batch, read, body, store, settings, explain
    )


# --- operations -------------------------------------------------------------------------

operations = APIRouter(tags=["operations"])


@operations.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: 200 while the process runs, model or not."""
    return Health()


@operations.get("/ready", response_model=Readiness, responses={503: ERRORS[503]})
async def ready(store: StoreDep) -> Readiness:
    """Readiness: 200 once a model is loaded, 503 before."""
    model = served_model(store)
    return Readiness(model_name=model.target.name, model_version=model.target.version)


@operations.get(
    "/model", response_model=ModelCard, dependencies=[CAN_READ_MODEL], responses={**AUTH_ERRORS, 503: ERRORS[503]}
)
async def model_card(store: StoreDep) -> ModelCard:
    """The model in service: name, version, alias, run, training metrics, lineage tags, input fields."""
    model = served_model(store)
    target = model.target
    return ModelCard(
        name=target.name,
        version=target.version,
        alias=target.alias,
        uri=target.uri,
        run_id=target.run_id,
        metrics=model.metrics,
        tags=model.tags,
        decision_threshold=model.decision_threshold,
        groups=model.groups,
        loaded_at=model.loaded_at,
        load_seconds=model.load_seconds,
        input_fields=input_fields(),
    )


@operations.post(
    "/reload",
    response_model=ReloadResult,
    dependencies=[Depends(require_reload_token)],
    responses={
        401: {"model": ErrorMessage},
        403: {"model": ErrorMessage},
        503: {"model": ErrorMessage, "description": "Loading failed; the old model serves."},
    },
)
async def reload(store: StoreDep) -> ReloadResult:
    """Load the version MODEL_URI names now (e.g. after `@production` moved), if it is not the one in service."""
    previous = store.current
    try:
        outcome, model = await run_in_threadpool(store.refresh, "http")
    except ModelLoadError as exc:
        serving = f"still serving version {previous.target.version}" if previous else "no model in service"
        raise HTTPException(503, f"reload failed, {serving}: {exc}") from None
    return ReloadResult(
        outcome=outcome,
        model_version=model.target.version,
        previous_version=previous.target.version if previous else None,
    )


@operations.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def prometheus_metrics(settings: SettingsDep) -> Response:
    """Prometheus metrics, summed over all worker processes."""
    content, content_type = metrics.exposition(settings.prometheus_multiproc_dir)
    return Response(content, media_type=content_type)


# --- errors ---------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": bounded(errors)}, status_code=422)

    @app.exception_handler(InvalidBatch)
    async def invalid_batch(_request: Request, exc: InvalidBatch) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=422)

    @app.exception_handler(BatchTooLarge)
    async def batch_too_large(_request: Request, exc: BatchTooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(NoModel)
    async def no_model(_request: Request, exc: NoModel) -> JSONResponse:
        return JSONResponse({"detail": f"no model loaded yet: {exc}"}, status_code=503, headers={"Retry-After": "5"})


def create_app(settings: Settings | None = None) -> FastAPI:
    """The inference service on `settings` (default: the environment's)."""
    settings = settings or get_settings()
    access = AccessControl(settings)  # a bad API_KEYS fails here, before anything starts
    if access.callers is None:
        log.warning("API_KEYS is not set: /predict, /predict/batch and /model answer anyone who can reach the service")
    store = ModelStore(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store.start()
        yield
        store.stop()
        app.state.batch_thread.shutdown(wait=False, cancel_futures=True)

    # The docs page's scripts are served by the API itself: a hospital network need not reach a CDN for them.
    app = FastAPIOffline(
        title="Diabetes readmission inference API",
        version="1.0.0",
        lifespan=lifespan,
        description="Predicts whether a diabetic patient will be readmitted, from one hospital encounter "
        "in the UCI data set's raw vocabulary.",
    )
    app.state.settings, app.state.store, app.state.batcher = settings, store, MicroBatcher(store)
    app.state.access = access
    app.state.batch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
    app.include_router(predictions)
    app.include_router(operations)
    app.add_middleware(RequestMetrics, max_body_bytes=settings.max_body_bytes)
    _install_error_handlers(app)
    return app
