"""The clinician UI's entry point: page set-up, navigation, and a last guard against tracebacks."""

from __future__ import annotations

import functools
import logging

import streamlit as st

from readmission.config import Settings, get_settings
from readmission.ui.access import signed_in_user
from readmission.ui.model_page import model_page
from readmission.ui.monitoring_page import monitoring_page
from readmission.ui.pages import batch_page, patient_page

PAGES = {  # url path -> (title, icon, page)
    "patient": ("Single patient", ":material/person:", patient_page),
    "batch": ("Batch", ":material/table_view:", batch_page),
    "model": ("Model", ":material/analytics:", model_page),
    "monitoring": ("Monitoring", ":material/monitoring:", monitoring_page),
}
log = logging.getLogger(__name__)


def main(settings: Settings | None = None, start_page: str = "patient") -> None:
    """Draw the app; `start_page` is the page a new visitor lands on (one of `PAGES`)."""
    settings = settings or get_settings()
    st.set_page_config(page_title="Readmission risk", page_icon=":material/local_hospital:", layout="wide")
    if not signed_in_user(settings):  # no form, no model page before sign-in
        return
    pages = [
        st.Page(functools.partial(page, settings), title=title, icon=icon, url_path=path, default=path == start_page)
        for path, (title, icon, page) in PAGES.items()
    ]
    with st.sidebar:
        st.markdown("**Diabetes readmission risk**")
        st.caption("Predicts whether a diabetic patient will be readmitted, from one hospital encounter.")
    current = st.navigation(pages)
    try:
        current.run()
    except Exception:  # the last guard: Streamlit's own rerun/stop signals are BaseExceptions and pass through
        log.exception("the %s page failed", current.title)
        st.error(
            "Something went wrong while drawing this page. Please retry; if it happens again, "
            "tell the platform team (the details are in the UI's log).",
            icon=":material/error:",
        )
        st.button("Retry", icon=":material/refresh:", key="retry_page")
