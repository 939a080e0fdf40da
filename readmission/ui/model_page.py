"""The clinician UI's model report card: the model in service as the API describes it, with its training run's
figures from MLflow (`readmission.ui.model_card`)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from readmission.config import Settings
from readmission.model import tags as model_tags
from readmission.serving.api_models import ModelCard
from readmission.ui import model_card
from readmission.ui.client import ApiError
from readmission.ui.pages import MODEL_CARD_CACHE_SECONDS, api_client, api_is_ready, show_api_error


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
        show_api_error(error)
        return
    details = _run_details(settings.mlflow_tracking_uri, card.run_id) if card.run_id else "The model has no run id."
    trained_at = details.trained_at if isinstance(details, model_card.RunDetails) else None

    st.subheader(f"{card.name}, version {card.version or '(loaded from a path)'}")
    facts = [
        f"Alias **{card.alias}**" if card.alias else None,
        f"trained **{trained_at:%Y-%m-%d %H:%M} UTC**" if trained_at else "training date unknown",
        f"in service since **{card.loaded_at:%Y-%m-%d %H:%M %Z}**",
    ]
    st.markdown(" · ".join(f for f in facts if f))

    st.subheader("Performance on the test set")
    for column, (label, value) in zip(st.columns(4), model_card.headline_metrics(card.metrics).items(), strict=False):
        column.metric(label, f"{value:.3f}" if value is not None else "—")
    if isinstance(details, str):
        st.info(
            f"{details} The ROC curve and confusion matrix are shown when MLflow is reachable.",
            icon=":material/cloud_off:",
        )
    elif images := {t: i for t, i in details.images.items() if t not in model_card.CALIBRATION_IMAGES}:
        for column, (title, image) in zip(st.columns(len(images)), images.items(), strict=False):
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
    st.caption(
        f"Run `{card.run_id or '—'}`, decision threshold {card.decision_threshold:.2f}, "
        f"loaded in {card.load_seconds:.1f} s."
    )
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
        f"On the test set, the expected calibration error is **{ece:.3f}**"
        if ece is not None
        else "The training run logged no calibration error"
    )
    text.markdown(
        f"(Brier score {brier:.3f}): among patients given about 30 %, about 30 in 100 were readmitted, give or "
        "take that error. "
        if brier is not None
        else ""
    )
    text.markdown(
        f"Risk bands: **low** below {medium:.0%}, **moderate** from {medium:.0%} to below {high:.0%}, "
        f"**high** from {high:.0%}, of predicted probability of readmission."
    )
    if diagram:
        image.image(diagram, caption="Reliability diagram (test set, 10 bins)", width="stretch")

    st.subheader("Quality for each patient group")
    if not card.groups:
        st.info("The training run logged no per-group metrics.")
        return
    worst, gap = card.metrics.get("test_roc_auc_worst_group"), card.metrics.get("test_roc_auc_group_gap")
    if worst is not None and gap is not None:
        st.markdown(
            f"Worst group ROC-AUC **{worst:.3f}**; largest gap within race, gender or age **{gap:.3f}**. "
            "Groups of fewer than 200 test encounters are too small to score."
        )
    st.dataframe(model_card.group_frame(card.groups), hide_index=True)
