"""The clinician UI's pages, drawn with Streamlit: one patient and a batch file
(the model report card is `model_page`, the Monitoring page `monitoring_page`).

The pages hold layout only; what they send and check comes from `forms`, `batch`,
`model_card` and `client`. Every failure a clinician can meet (the API down or not ready,
a rejected file, MLflow unreachable) is shown as a plain message, never as a traceback.
"""

from __future__ import annotations

import hashlib
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from readmission.config import Settings
from readmission.serving.api_models import RISK_BANDS, BatchPrediction, Prediction
from readmission.ui import batch, forms
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


def show_api_error(error: ApiError) -> None:
    st.error(str(error), icon=":material/error:")
    st.button("Retry", icon=":material/refresh:", key="retry_request")


# --- single patient ---------------------------------------------------------------------


def _field_widget(field: forms.FormField) -> object:
    """Draw one form field; its value is kept in the session under `field:<column>`."""
    key = f"field:{field.column}"
    if isinstance(field, forms.Choice):
        options = field.options
        return st.selectbox(
            field.label,
            options,
            index=options.index(field.default),
            key=key,
            format_func=field.labels.__getitem__,
            help=field.help or None,
        )
    if isinstance(field, forms.Count):
        low, high = field.bounds
        return st.number_input(
            field.label, min_value=low, max_value=high, value=field.default, step=1, key=key, help=field.help or None
        )
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


def _draw_form() -> tuple[dict[str, object], dict[str, Any]]:
    """The whole form; returns the values by column and the message slot of each field."""
    values: dict[str, object] = {}
    messages: dict[str, object] = {}
    for section in forms.SECTIONS:
        if section.collapsed:
            summary = forms.medication_summary(
                {f.column: st.session_state.get(f"field:{f.column}", f.default) for f in section.fields}
            )
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
        st.caption(
            f"Risk band: **{band}**. Model `{prediction.model_name}` version "
            f"{prediction.model_version or '(loaded from a path)'}. The prediction supports, and does not "
            "replace, clinical judgement."
        )
        if prediction.factors:
            st.markdown("**What moved this patient's risk most**")
            st.altair_chart(_factors_chart(prediction), width="stretch")
            st.caption(
                "Each bar is one field of the form: to the right it raises the risk, to the left it lowers "
                "it, by its exact share of the model's log-odds (the bars and the model's average add up to "
                "its answer). Other fields moved it less."
            )


def _factors_chart(prediction: Prediction) -> alt.Chart:
    """The explanation's factors as horizontal bars in clinical words, red for raises, green for lowers."""
    factors = pd.DataFrame(
        [
            {
                "factor": f"{factor.label}: {factor.value_label}",
                "contribution": factor.contribution,
                "direction": factor.direction,
            }
            for factor in prediction.factors or []
        ]
    )
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
    clicked = st.button(
        "Predict readmission risk",
        type="primary",
        icon=":material/monitor_heart:",
        disabled=not ready or bool(problems),
        key="predict",
    )
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
            show_api_error(error)
        except ApiError as error:
            show_api_error(error)
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
            x=alt.X(
                "probability:Q",
                bin=alt.Bin(extent=[0, 1], step=0.05),
                title="Probability of readmission",
                axis=alt.Axis(format="%"),
            ),
            y=alt.Y("count():Q", title="Encounters"),
            color=alt.Color(
                "risk_band:N",
                title="Risk band",
                sort=list(RISK_BANDS),
                scale=alt.Scale(domain=list(RISK_BANDS), range=[BAND_COLOURS[b] for b in RISK_BANDS]),
            ),
        )
        .properties(height=260)
    )


def _show_batch(scored: pd.DataFrame, rejected: pd.DataFrame, latency_ms: float, filename: str) -> None:
    counts = batch.band_counts(scored) if not scored.empty else dict.fromkeys(RISK_BANDS, 0)
    columns = st.columns(5)
    columns[0].metric("Scored", f"{len(scored):,}")
    for column, band in zip(columns[1:4], RISK_BANDS, strict=False):
        column.metric(f"{band.capitalize()} risk", f"{counts[band]:,}")
    columns[4].metric("Rejected", f"{len(rejected):,}")
    if not rejected.empty:
        st.warning(f"{len(rejected):,} row(s) were rejected and not scored; the others were.", icon=":material/rule:")
        st.dataframe(
            rejected,
            hide_index=True,
            width="stretch",
            column_config={
                "line": st.column_config.NumberColumn("Line", format="%d"),
                "reason": st.column_config.TextColumn("Reason", width="large"),
            },
        )
    if scored.empty:
        st.error("No row of the file could be scored.")
        return
    st.caption(f"API latency {latency_ms:,.0f} ms for {len(scored):,} encounters.")
    st.altair_chart(_risk_histogram(scored), width="stretch")
    shown = ["line", *batch.identifying_columns(scored), "probability", "risk_band", "label"]
    st.dataframe(
        scored[shown],
        hide_index=True,
        width="stretch",
        column_config={
            "line": st.column_config.NumberColumn("Line", format="%d"),
            "probability": st.column_config.ProgressColumn("Probability", min_value=0, max_value=1, format="percent"),
            "risk_band": "Risk band",
            "label": "Assessment",
        },
    )
    stem = filename.removesuffix(".gz").removesuffix(".csv")
    st.download_button(
        "Download scored CSV",
        batch.scored_csv(scored),
        file_name=f"{stem}-scored.csv",
        mime="text/csv",
        icon=":material/download:",
        on_click="ignore",
    )


def batch_page(settings: Settings) -> None:
    """Batch: upload a CSV in the data set's format, get every row scored (or told why not)."""
    st.title("Readmission risk of a batch of encounters")
    st.caption(
        f"Upload a CSV in the data set's format (up to {settings.max_batch_rows:,} rows; extra columns "
        "are ignored). Each row is checked first: rows with errors are listed, the others are scored."
    )
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
            show_api_error(error)
            return
    _, scored, rejected, latency_ms = cached
    _show_batch(scored, rejected, latency_ms, filename=upload.name)
