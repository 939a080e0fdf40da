"""The clinician UI's Monitoring page: the model's record over time, read from the platform's own stores
(`readmission.model_record`): live ROC-AUC per batch, drift, the version in service, promotions."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from readmission.config import Settings
from readmission.drift import SIGNIFICANT_PSI
from readmission.ui.pages import BAND_COLOURS, MODEL_CARD_CACHE_SECONDS


@st.cache_data(ttl=MODEL_CARD_CACHE_SECONDS, show_spinner="Reading the batches, predictions and registry...")
def _record(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame] | str:
    """The batch record and the promotions, or why they could not be read (the message is cached briefly too)."""
    from readmission import model_record

    try:
        return model_record.batch_record(settings), model_record.promotions(settings)
    except Exception as error:  # noqa: BLE001 - a store being down is a message on the page, not a traceback
        return f"The platform's stores could not be read: {type(error).__name__}: {error}"


def _live_chart(batches: pd.DataFrame, promoted: pd.DataFrame, floor: float) -> alt.LayerChart | alt.FacetChart:
    """Live ROC-AUC per batch (a red point below the floor), the floor as a rule, and promotions as rules."""
    scored = batches.dropna(subset=["live_roc_auc"]).assign(
        status=lambda f: np.where(f["below_floor"], "below the floor", "at or above the floor")
    )
    x = alt.X("batch:O", title="batch")
    line = (
        alt.Chart(scored)
        .mark_line(color="#607d8b")
        .encode(x=x, y=alt.Y("live_roc_auc:Q", title="live ROC-AUC", scale=alt.Scale(zero=False)))
    )
    points = (
        alt.Chart(scored)
        .mark_point(filled=True, size=90)
        .encode(
            x=x,
            y="live_roc_auc:Q",
            color=alt.Color(
                "status:N",
                scale=alt.Scale(
                    domain=["at or above the floor", "below the floor"],
                    range=[BAND_COLOURS["low"], BAND_COLOURS["high"]],
                ),
                legend=alt.Legend(title=None, orient="bottom"),
            ),
            tooltip=["batch", "model_version", alt.Tooltip("live_roc_auc:Q", format=".3f"), "top_drifting"],
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"floor": [floor]}))
        .mark_rule(strokeDash=[6, 4], color=BAND_COLOURS["high"])
        .encode(y="floor:Q")
    )
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
    st.caption(
        "Each batch is scored by the model in service before any training on it: how it did on those "
        "patients is the model's live record. Read from the platform's own stores."
    )
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
        st.error(
            f"Live ROC-AUC below the floor {floor:.2f} on batch(es) {', '.join(map(str, below['batch']))}.",
            icon=":material/warning:",
        )
    if batches["live_roc_auc"].notna().any():
        st.altair_chart(_live_chart(batches, promoted, floor), width="stretch")
    table = batches.assign(
        flag=np.where(batches["below_floor"], "⚠ below floor", ""),
        received_at=pd.to_datetime(batches["received_at"]).dt.strftime("%Y-%m-%d %H:%M"),
    )[["batch", "received_at", "rows_stored", "model_version", "live_roc_auc", "flag", "max_psi", "top_drifting"]]
    st.dataframe(
        table.rename(
            columns={
                "batch": "Batch",
                "received_at": "Received (UTC)",
                "rows_stored": "Rows",
                "model_version": "Version in service",
                "live_roc_auc": "Live ROC-AUC",
                "flag": "",
                "max_psi": "Largest PSI",
                "top_drifting": "Most drifting (PSI)",
            }
        ),
        hide_index=True,
        column_config={
            "Live ROC-AUC": st.column_config.NumberColumn(format="%.3f"),
            "Largest PSI": st.column_config.NumberColumn(format="%.3f"),
        },
    )
    st.caption(
        f"Version in service: the version that scored the batch (none before the first promotion). "
        f"PSI above {SIGNIFICANT_PSI} is a significant shift from the data that version was trained on."
    )
    st.subheader("Promotions")
    if promoted.empty:
        st.info("No version has been promoted yet.")
    else:
        st.dataframe(
            promoted.assign(promoted_at=promoted["promoted_at"].dt.strftime("%Y-%m-%d %H:%M")).rename(
                columns={
                    "version": "Version",
                    "promoted_at": "Promoted (UTC)",
                    "promoted_by": "By",
                    "replaced": "Replaced",
                    "reason": "Gate's reason",
                }
            ),
            hide_index=True,
        )
