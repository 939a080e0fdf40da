"""Who may use the clinician UI: sign-in through the hospital's OpenID Connect provider, then an allow-list.

With `UI_SIGN_IN` on, nothing of the app is drawn before a user has signed in with Streamlit's
built-in `st.login` (the provider, client and cookie secret are the `[auth]` section of
`.streamlit/secrets.toml`, a Kubernetes Secret in production). A signed-in user enters when the
e-mail's domain is in `UI_ALLOWED_DOMAINS` or one of the groups in the ID token's
`UI_GROUPS_CLAIM` is in `UI_ALLOWED_GROUPS`; with neither list set, everyone the provider signs in
enters (the provider is the hospital's own). An e-mail the provider marks unverified never counts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import streamlit as st

from readmission.config import Settings

log = logging.getLogger(__name__)


def _listed(text: str) -> set[str]:
    return {item.strip().lower() for item in text.split(",") if item.strip()}


def claimed_groups(claims: Mapping[str, object], claim: str) -> set[str]:
    """The groups of the ID token's `claim`: a list, or one string of names separated by commas or spaces."""
    value = claims.get(claim)
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list | tuple):
        return set()
    return {str(group).strip().lower() for group in value if str(group).strip()}


def may_enter(claims: Mapping[str, object], settings: Settings) -> bool:
    """Whether a signed-in user, described by the ID token's claims, may use the UI."""
    domains, groups = _listed(settings.ui_allowed_domains), _listed(settings.ui_allowed_groups)
    if not domains and not groups:
        return True
    email = str(claims.get("email") or "").strip().lower()
    verified = claims.get("email_verified", True) not in (False, "false")
    domain = email.rpartition("@")[2] if "@" in email and verified else ""
    return domain in domains or bool(claimed_groups(claims, settings.ui_groups_claim) & groups)


def signed_in_user(settings: Settings) -> bool:
    """Draw the sign-in page, or the refusal, and return False; or show who is signed in and return True.

    Without `UI_SIGN_IN` everyone enters (the embedded `make demo` stack).
    """
    if not settings.ui_sign_in:
        return True
    claims = st.user.to_dict()  # the ID token's claims and `is_logged_in` (empty outside a server, e.g. AppTest)
    if not claims.get("is_logged_in"):
        st.title("Readmission risk")
        st.info("Sign in with your hospital account to use the readmission risk tools.", icon=":material/lock:")
        if st.button("Sign in", type="primary", icon=":material/login:", key="sign_in"):
            st.login()
        return False
    who = str(claims.get("email") or claims.get("name") or claims.get("sub") or "you")
    if not may_enter(claims, settings):
        log.warning("a signed-in user outside UI_ALLOWED_DOMAINS / UI_ALLOWED_GROUPS was refused")
        st.title("Readmission risk")
        st.error(
            f"The account {who} may not use this application. If you need it, ask the platform team to "
            "add your department.",
            icon=":material/block:",
        )
        if st.button("Sign out", icon=":material/logout:", key="sign_out_refused"):
            st.logout()
        return False
    with st.sidebar:
        st.caption(f"Signed in as **{who}**")
        if st.button("Sign out", icon=":material/logout:", key="sign_out"):
            st.logout()
    return True
