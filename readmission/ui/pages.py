"""The clinician UI's pages, drawn with Streamlit: one patient, a batch file, the model's report card.

The pages hold layout only; what they send and check comes from `forms`, `batch`,
`model_card` and `client`. Every failure a clinician can meet (the API down or not ready,
a rejected file, MLflow unreachable) is shown as a plain message, never as a traceback.
"""

from __future__ import annotations

import hashlib

import altair as alt
import numpy as np
import pandas as pd

import streamlit as st
from readmission.config import Settings
from readmission.drift import SIGNIFICANT_PSI
from readmission.model import tags as model_tags
from readmission.serving.api_models import RISK_BANDS, BatchPrediction, ModelCard, Prediction
from readmission.ui import batch, forms, model_card
from readmission.ui.client import ApiError, ApiNotReady, ApiRejected, InferenceClient

BAND_COLOURS = {"low": "#2e7d32", "medium": "#ef6c00", "high": "#c62828"}
BAND_MARKDOWN_COLOURS = {"low": "green", "medium": "orange", "high": "red"}
MODEL_CARD_CACHE_SECONDS = 300


def api_client(settings: Settings) -> InferenceClient:
    """This browser session's client of the API (one connection pool per session)."""
    key = f"api_client:{settings.api_url}"
    if key not in st.session_state:
        st.session_state[key] = InferenceClient(
            settings.api_url, settings.api_timeout_seconds, api_key=settings.api_key.get_secret_value()
        )
    return st.session_state[key]


def api_is_ready(client: InferenceClient) -> bool:
    """True when the API has a model to answer with; otherwise say why, with a retry button."""
    try:
        client.ready()
        return True
    except ApiNotReady as error:
        st.warning(f"{error} Predictions are possible once a model is loaded.", icon=":material/hourglass_top:")
    except ApiError as error:
        st.error(f"{error} Check that the prediction service is running, then retry.", icon=":material/cloud_off:")
    st.button("Retry", icon=":material/refresh:", key="retry_api")  # a click reruns the page
    return False


def _show_api_error(error: ApiError) -> None:
    st.error(str(error), icon=":material/error:")
    st.button("Retry", icon=":material/refresh:", key="retry_request")


# --- single patient ---------------------------------------------------------------------


def _field_widget(field: forms.FormField) -> object:
    """Draw one form field; its value is kept in the session under `field:<column>`."""
    key = f"field:{field.column}"
    if isinstance(field, forms.Choice):
        options = field.options
        return st.selectbox(field.label, options, index=options.index(field.default), key=key,
                            format_func=field.labels.__getitem__, help=field.help or None)  # fmt: skip
    if isinstance(field, forms.Count):
        low, high = field.bounds
        return st.number_input(field.label, min_value=low, max_value=high, value=field.default, step=1, key=key,
                               help=field.help or None)  # fmt: skip
    code = st.text_input(field.label, value=field.default, max_chars=16, key=key, help=field.help)
    st.caption(f"Group: **{forms.diagnosis_group(code)}**")
    return code


def _draw_section(section: forms.Section, values: dict[str, object], messages: dict[str, object]) -> None:
    """Draw a section's fields in columns, each with an empty slot below it for its message."""
    columns = st.columns(section.columns)
    for i, field in enumerate(section.fields):
        with columns[i % section.columns]:
            values[field.column] = _field_widget(field)
            messages[field.column] = st.empty()


def _draw_form() -> tuple[dict[str, object], dict[str, object]]:
    """The whole form; returns the values by column and the message slot of each field."""
    values: dict[str, object] = {}
    messages: dict[str, object] = {}
    for section in forms.SECTIONS:
        if section.collapsed:
            summary = forms.medication_summary({f.column: st.session_state.get(f"field:{f.column}", f.default)
                                                for f in section.fields})  # fmt: skip
            # A key keeps the expander open while its title (the summary) changes.
            with st.expander(f"**{section.title}**: {summary}", expanded=False, key=f"section:{section.title}"):
                _draw_section(section, values, messages)
            continue
        with st.container(border=True):
            st.markdown(f"**{section.title}**")
            if section.caption:
                st.caption(section.caption)
            _draw_section(section, values, messages)
    return values, messages


def _gauge(probability: float, band: str) -> str:
    """A horizontal bar filled to the probability, in the band's colour, with a 0-100% scale below."""
    percent = max(0.0, min(100.0, probability * 100))
    return (
        '<div role="meter" aria-label="Probability of readmission" '
        f'aria-valuenow="{percent:.0f}" aria-valuemin="0" aria-valuemax="100" '
        'style="background:#e9ecef;border-radius:8px;height:22px;width:100%;">'
        f'<div style="background:{BAND_COLOURS[band]};width:{percent:.1f}%;height:100%;border-radius:8px;"></div></div>'
        '<div style="display:flex;justify-content:space-between;font-size:0.8em;color:#666;">'
        "<span>0%</span><span>50%</span><span>100%</span></div>"
    )


def show_prediction(prediction: Prediction, latency_ms: float) -> None:
    """The answer: the band in words and colour, the probability as a bar, the model and the latency."""
    band = prediction.risk_band
    with st.container(border=True):
        st.markdown(f"### :{BAND_MARKDOWN_COLOURS[band]}[{prediction.label}]")
        st.markdown(_gauge(prediction.probability, band), unsafe_allow_html=True)
        probability, model, latency = st.columns(3)
        probability.metric("Probability of readmission", f"{prediction.probability:.0%}")
        model.metric("Model", f"version {prediction.model_version or 'local'}", help=prediction.model_name)
        latency.metric("API latency", f"{latency_ms:.0f} ms")
        st.caption(f"Risk band: **{band}**. Model `{prediction.model_name}` version "
                   f"{prediction.model_version or '(loaded from a path)'}. The prediction supports, and does not "
                   "replace, clinical judgement.")  # fmt: skip
        if prediction.factors:
            st.markdown("**What moved this patient's risk most**")
            st.altair_chart(_factors_chart(prediction), width="stretch")
            st.caption("Each bar is one field of the form: to the right it raises the risk, to the left it lowers "
                       "it, by its exact share of the model's log-odds (the bars and the model's average add up to "
                       "its answer). Other fields moved it less.")  # fmt: skip


def _factors_chart(prediction: Prediction) -> alt.Chart:
    """The explanation's factors as horizontal bars in clinical words, red for raises, green for lowers."""
    factors = pd.DataFrame([{"factor": f"{factor.label}: {factor.value_label}", "contribution": factor.contribution,
                             "direction": factor.direction} for factor in prediction.factors or []])  # fmt: skip
    colours = alt.Scale(domain=["raises", "lowers"], range=[BAND_COLOURS["high"], BAND_COLOURS["low"]])
    return (
        alt.Chart(factors, height=36 * len(factors) + 40)
        .mark_bar()
        .encode(
            x=alt.X("contribution:Q", title="contribution to the log-odds of readmission"),
            y=alt.Y("factor:N", sort=None, title=None, axis=alt.Axis(labelLimit=400)),
            color=alt.Color("direction:N", scale=colours, legend=alt.Legend(title=None, orient="bottom")),
            tooltip=["factor", alt.Tooltip("contribution:Q", format="+.3f"), "direction"],
        )
    )


def patient_page(settings: Settings) -> None:
    """Single patient: the form in chart order, a predict button, and the answer."""
    st.title("Readmission risk of one patient")
    st.caption("Fill in the encounter as it reads in the chart, then press **Predict readmission risk**.")
    client = api_client(settings)
    ready = api_is_ready(client)
    values, messages = _draw_form()
    problems = forms.form_problems(values)
    for column, message in problems.items():
        (messages.get(column) or st).error(message, icon=":material/error:")
    payload = forms.encounter_payload(values)
    clicked = st.button("Predict readmission risk", type="primary", icon=":material/monitor_heart:",
                        disabled=not ready or bool(problems), key="predict")  # fmt: skip
    if problems:
        st.caption("Correct the fields marked in red to predict.")
    if clicked:
        try:
            answer = client.predict(payload, explain=True)
            st.session_state["patient_result"] = (payload, Prediction.model_validate(answer.body), answer.latency_ms)
        except ApiRejected as error:
            for entry in error.detail if isinstance(error.detail, list) else []:
                column = str(entry.get("loc", ["", ""])[-1])
                if column in messages:
                    messages[column].error(entry.get("msg", ""), icon=":material/error:")
            _show_api_error(error)
        except ApiError as error:
            _show_api_error(error)
    result = st.session_state.get("patient_result")
    if result and result[0] == payload:
        show_prediction(result[1], result[2])
    elif result:
        st.info("The form has changed since the last prediction: press **Predict readmission risk** again.")


# --- batch ------------------------------------------------------------------------------


def _score_upload(client: InferenceClient, content: bytes, max_rows: int) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Scored rows, rejected rows and the API's latency for one file; raises on file or API errors."""
    prepared = batch.prepare_batch(batch.read_upload(content), max_rows)
    if not prepared.encounters:
        return pd.DataFrame(), prepared.rejected, 0.0
    answer = client.predict_batch(prepared.encounters)
    return (
        batch.scored_frame(prepared, BatchPrediction.model_validate(answer.body)),
        prepared.rejected,
        answer.latency_ms,
    )


def _risk_histogram(scored: pd.DataFrame) -> alt.Chart:
    """Counts of rows by predicted probability, coloured by risk band."""
    return (
        alt.Chart(scored[["probability", "risk_band"]])
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", bin=alt.Bin(extent=[0, 1], step=0.05), title="Probability of readmission",
                    axis=alt.Axis(format="%")),
            y=alt.Y("count():Q", title="Encounters"),
            color=alt.Color("risk_band:N", title="Risk band", sort=list(RISK_BANDS),
                            scale=alt.Scale(domain=list(RISK_BANDS), range=[BAND_COLOURS[b] for b in RISK_BANDS])),
        )
        .properties(height=260)
    )  # fmt: skip


def _show_batch(scored: pd.DataFrame, rejected: pd.DataFrame, latency_ms: float, filename: str) -> None:
    counts = batch.band_counts(scored) if not scored.empty else dict.fromkeys(RISK_BANDS, 0)
    columns = st.columns(5)
    columns[0].metric("Scored", f"{len(scored):,}")
    for column, band in zip(columns[1:4], RISK_BANDS):
        column.metric(f"{band.capitalize()} risk", f"{counts[band]:,}")
    columns[4].metric("Rejected", f"{len(rejected):,}")
    if not rejected.empty:
        st.warning(f"{len(rejected):,} row(s) were rejected and not scored; the others were.", icon=":material/rule:")
        st.dataframe(rejected, hide_index=True, width="stretch",
                     column_config={"line": st.column_config.NumberColumn("Line", format="%d"),
                                    "reason": st.column_config.TextColumn("Reason", width="large")})  # fmt: skip
    if scored.empty:
        st.error("No row of the file could be scored.")
        return
    st.caption(f"API latency {latency_ms:,.0f} ms for {len(scored):,} encounters.")
    st.altair_chart(_risk_histogram(scored), width="stretch")
    shown = ["line", *batch.identifying_columns(scored), "probability", "risk_band", "label"]
    st.dataframe(scored[shown], hide_index=True, width="stretch", column_config={
        "line": st.column_config.NumberColumn("Line", format="%d"),
        "probability": st.column_config.ProgressColumn("Probability", min_value=0, max_value=1, format="percent"),
        "risk_band": "Risk band", "label": "Assessment",
    })  # fmt: skip
    stem = filename.removesuffix(".gz").removesuffix(".csv")
    st.download_button("Download scored CSV", batch.scored_csv(scored), file_name=f"{stem}-scored.csv",
                       mime="text/csv", icon=":material/download:", on_click="ignore")  # fmt: skip


def batch_page(settings: Settings) -> None:
    """Batch: upload a CSV in the data set's format, get every row scored (or told why not)."""
    st.title("Readmission risk of a batch of encounters")
    st.caption(f"Upload a CSV in the data set's format (up to {settings.max_batch_rows:,} rows; extra columns "
               "are ignored). Each row is checked first: rows with errors are listed, the others are scored.")  # fmt: skip
    client = api_client(settings)
    ready = api_is_ready(client)
    upload = st.file_uploader("Encounters CSV", type=["csv", "gz"], disabled=not ready, key="batch_file")
    if upload is None:
        return
    content = upload.getvalue()
    digest = hashlib.sha256(content).hexdigest()
    cached = st.session_state.get("batch_result")
    if not cached or cached[0] != digest:
        try:
            with st.spinner("Checking and scoring the file..."):
                st.session_state["batch_result"] = cached = (
                    digest,
                    *_score_upload(client, content, settings.max_batch_rows),
                )
        except batch.BatchFileError as error:
            st.error(str(error), icon=":material/description:")
            return
        except ApiError as error:
            _show_api_error(error)
            return
    _show_batch(*cached[1:], filename=upload.name)


# --- model report card ------------------------------------------------------------------


@st.cache_data(ttl=MODEL_CARD_CACHE_SECONDS, show_spinner="Fetching the training run from MLflow...")
def _run_details(tracking_uri: str, run_id: str) -> model_card.RunDetails | str:
    """The run's details, or why MLflow could not give them (a message is cached too, briefly)."""
    try:
        return model_card.run_details(tracking_uri, run_id)
    except model_card.MlflowUnavailable as error:
        return str(error)


def model_page(settings: Settings) -> None:
    """Model: version, training date, metrics, evaluation images and lineage of the model in service."""
    st.title("Model in service")
    client = api_client(settings)
    if not api_is_ready(client):
        return
    try:
        card = ModelCard.model_validate(client.model())
    except ApiError as error:
        _show_api_error(error)
        return
    details = _run_details(settings.mlflow_tracking_uri, card.run_id) if card.run_id else "The model has no run id."
    trained_at = details.trained_at if isinstance(details, model_card.RunDetails) else None

    st.subheader(f"{card.name}, version {card.version or '(loaded from a path)'}")
    facts = [f"Alias **{card.alias}**" if card.alias else None,
             f"trained **{trained_at:%Y-%m-%d %H:%M} UTC**" if trained_at else "training date unknown",
             f"in service since **{card.loaded_at:%Y-%m-%d %H:%M %Z}**"]  # fmt: skip
    st.markdown(" · ".join(f for f in facts if f))

    st.subheader("Performance on the test set")
    for column, (label, value) in zip(st.columns(4), model_card.headline_metrics(card.metrics).items()):
        column.metric(label, f"{value:.3f}" if value is not None else "—")
    if isinstance(details, str):
        st.info(f"{details} The ROC curve and confusion matrix are shown when MLflow is reachable.",
                icon=":material/cloud_off:")  # fmt: skip
    elif images := {t: i for t, i in details.images.items() if t not in model_card.CALIBRATION_IMAGES}:
        for column, (title, image) in zip(st.columns(len(images)), images.items()):
            column.image(image, caption=title, width="stretch")
    else:
        st.info("The training run logged no ROC curve or confusion matrix image.")

    _show_calibration_and_groups(card, details, settings)

    st.subheader("Lineage")
    st.markdown(f"**Batches trained on:** {model_card.trained_batches(card.tags) or 'not recorded'}")
    lineage = {
        k.removeprefix(model_tags.LINEAGE_PREFIX): v
        for k, v in card.tags.items()
        if k.startswith(model_tags.LINEAGE_PREFIX)
    }
    if lineage:
        st.dataframe(pd.DataFrame(sorted(lineage.items()), columns=["Lineage", "Value"]), hide_index=True)
    if card.tags:
        with st.expander("All tags of the run and the registered version"):
            st.dataframe(pd.DataFrame(sorted(card.tags.items()), columns=["Tag", "Value"]), hide_index=True)
    st.caption(f"Run `{card.run_id or '—'}`, decision threshold {card.decision_threshold:.2f}, "
               f"loaded in {card.load_seconds:.1f} s.")  # fmt: skip
    if settings.mlflow_ui_url and card.run_id and isinstance(details, model_card.RunDetails):
        st.link_button("Open the run in MLflow", details.mlflow_link(settings.mlflow_ui_url, card.run_id))


def _show_calibration_and_groups(card: ModelCard, details: model_card.RunDetails | str, settings: Settings) -> None:
    """What the probabilities mean (the reliability diagram, the bands as probabilities) and the group table."""
    st.subheader("Do the probabilities mean what they say?")
    ece, brier = card.metrics.get("test_ece"), card.metrics.get("test_brier")
    medium, high = settings.risk_medium_threshold, settings.risk_high_threshold
    diagram = details.images.get("Reliability diagram") if isinstance(details, model_card.RunDetails) else None
    text, image = st.columns(2)
    text.markdown(
        f"On the test set, the expected calibration error is **{ece:.3f}**" if ece is not None else
        "The training run logged no calibration error"
    )  # fmt: skip
    text.markdown(
        f"(Brier score {brier:.3f}): among patients given about 30 %, about 30 in 100 were readmitted, give or "
        "take that error. " if brier is not None else ""
    )  # fmt: skip
    text.markdown(f"Risk bands: **low** below {medium:.0%}, **moderate** from {medium:.0%} to below {high:.0%}, "
                  f"**high** from {high:.0%}, of predicted probability of readmission.")  # fmt: skip
    if diagram:
        image.image(diagram, caption="Reliability diagram (test set, 10 bins)", width="stretch")

    st.subheader("Quality for each patient group")
    if not card.groups:
        st.info("The training run logged no per-group metrics.")
        return
    worst, gap = card.metrics.get("test_roc_auc_worst_group"), card.metrics.get("test_roc_auc_group_gap")
    if worst is not None and gap is not None:
        st.markdown(f"Worst group ROC-AUC **{worst:.3f}**; largest gap within race, gender or age **{gap:.3f}**. "
                    "Groups of fewer than 200 test encounters are too small to score.")  # fmt: skip
    st.dataframe(model_card.group_frame(card.groups), hide_index=True)


# --- monitoring ---------------------------------------------------------------------------


@st.cache_data(ttl=MODEL_CARD_CACHE_SECONDS, show_spinner="Reading the batches, predictions and registry...")
def _record(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame] | str:
    """The batch record and the promotions, or why they could not be read (the message is cached briefly too)."""
    from readmission import model_record

    try:
        return model_record.batch_record(settings), model_record.promotions(settings)
    except Exception as error:  # noqa: BLE001 - a store being down is a message on the page, not a traceback
        return f"The platform's stores could not be read: {type(error).__name__}: {error}"


def _live_chart(batches: pd.DataFrame, promoted: pd.DataFrame, floor: float) -> alt.Chart:
    """Live ROC-AUC per batch (a red point below the floor), the floor as a rule, and promotions as rules."""
    scored = batches.dropna(subset=["live_roc_auc"]).assign(
        status=lambda f: np.where(f["below_floor"], "below the floor", "at or above the floor"))  # fmt: skip
    x = alt.X("batch:O", title="batch")
    line = alt.Chart(scored).mark_line(color="#607d8b").encode(x=x, y=alt.Y("live_roc_auc:Q", title="live ROC-AUC",
                                                                             scale=alt.Scale(zero=False)))  # fmt: skip
    points = alt.Chart(scored).mark_point(filled=True, size=90).encode(
        x=x, y="live_roc_auc:Q",
        color=alt.Color("status:N", scale=alt.Scale(domain=["at or above the floor", "below the floor"],
                                                    range=[BAND_COLOURS["low"], BAND_COLOURS["high"]]),
                        legend=alt.Legend(title=None, orient="bottom")),
        tooltip=["batch", "model_version", alt.Tooltip("live_roc_auc:Q", format=".3f"), "top_drifting"])  # fmt: skip
    rule = alt.Chart(pd.DataFrame({"floor": [floor]})).mark_rule(strokeDash=[6, 4], color=BAND_COLOURS["high"]).encode(
        y="floor:Q")  # fmt: skip
    layers = [line, points, rule]
    if len(promoted):  # each promotion at the first batch that arrived after it: the first the new version scored
        received = pd.to_datetime(batches["received_at"], utc=True)
        at = [batches["batch"][received >= when].min() for when in pd.to_datetime(promoted["promoted_at"], utc=True)]
        marks = pd.DataFrame({"batch": at, "text": [f"v{v} promoted" for v in promoted["version"]]}).dropna()
        marks = marks[marks["batch"].isin(scored["batch"])]
        if len(marks):
            layers += [
                alt.Chart(marks).mark_rule(color="#1565c0").encode(x=x),
                alt.Chart(marks).mark_text(align="left", dx=4, dy=-120, color="#1565c0").encode(x=x, text="text"),
            ]
    return alt.layer(*layers, height=280)


def monitoring_page(settings: Settings) -> None:
    """The model's record over time: live ROC-AUC per batch, drift, the version in service, promotions."""
    st.title("Monitoring")
    st.caption("Each batch is scored by the model in service before any training on it: how it did on those "
               "patients is the model's live record. Read from the platform's own stores.")  # fmt: skip
    record = _record(settings)
    if isinstance(record, str):
        st.error(record, icon=":material/database:")
        st.button("Retry", icon=":material/refresh:", key="retry_record", on_click=_record.clear)
        return
    batches, promoted = record
    if batches.empty:
        st.info("No batch has been ingested yet.")
        return
    floor = settings.promotion_min_auc
    below = batches[batches["below_floor"]]
    if len(below):
        st.error(f"Live ROC-AUC below the floor {floor:.2f} on batch(es) "
                 f"{', '.join(map(str, below['batch']))}.", icon=":material/warning:")  # fmt: skip
    if batches["live_roc_auc"].notna().any():
        st.altair_chart(_live_chart(batches, promoted, floor), width="stretch")
    table = batches.assign(
        flag=np.where(batches["below_floor"], "⚠ below floor", ""),
        received_at=pd.to_datetime(batches["received_at"]).dt.strftime("%Y-%m-%d %H:%M"),
    )[["batch", "received_at", "rows_stored", "model_version", "live_roc_auc", "flag", "max_psi", "top_drifting"]]
    st.dataframe(table.rename(columns={
        "batch": "Batch", "received_at": "Received (UTC)", "rows_stored": "Rows", "model_version": "Version in service",
        "live_roc_auc": "Live ROC-AUC", "flag": "", "max_psi": "Largest PSI", "top_drifting": "Most drifting (PSI)"}),
        hide_index=True, column_config={"Live ROC-AUC": st.column_config.NumberColumn(format="%.3f"),
                                        "Largest PSI": st.column_config.NumberColumn(format="%.3f")})  # fmt: skip
    st.caption(
        f"Version in service: the version that scored the batch (none before the first promotion). "
        f"PSI above {SIGNIFICANT_PSI} is a significant shift from the data that version was trained on."
    )
    st.subheader("Promotions")
    if promoted.empty:
        st.info("No version has been promoted yet.")
    else:
        st.dataframe(promoted.assign(promoted_at=promoted["promoted_at"].dt.strftime("%Y-%m-%d %H:%M")).rename(
            columns={"version": "Version", "promoted_at": "Promoted (UTC)", "promoted_by": "By",
                     "replaced": "Replaced", "reason": "Gate's reason"}), hide_index=True)  # fmt: skip
