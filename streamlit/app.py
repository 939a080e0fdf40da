"""Streamlit clinician UI: `streamlit run streamlit/app.py`. The pages live in `readmission.ui`."""

from readmission.ui.app import main

main()
