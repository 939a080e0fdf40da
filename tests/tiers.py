"""Test tiers, and no silent skips under CI.

`servers` marks a test that starts a server, a browser or a container; `make test-fast` runs the others
(pure functions and in-process apps) except the `acceptance` tests on the real data set. A test is marked when it uses a fixture that starts one
(`SERVER_FIXTURES`), takes a MariaDB flavour of `storage_urls`, or its module sets
`pytestmark = pytest.mark.servers`. In the fast tier the starters themselves refuse to run, so a test that
starts a server without the mark fails there instead of slowing the tier down unnoticed.

Under `CI=true` a skipped test is a failure: `make test` installs every tool, so a skip means something is
missing.
"""

from __future__ import annotations

import os

import pytest

SERVER_FIXTURES = frozenset(
    {"mariadb", "mariadb_urls", "s3_server", "mlflow_server", "synthetic_data_api", "served_model", "browser"}
)
FAST_TIER = "not servers and not acceptance"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "servers: starts a server, a browser or a container (not in make test-fast)")
    if config.option.markexpr.strip() == FAST_TIER:
        config.stash[_patches] = _refuse_servers()


def pytest_unconfigure(config: pytest.Config) -> None:
    patches = config.stash.get(_patches, None)
    if patches is not None:
        patches.undo()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or _storage_on_mariadb(item):
            item.add_marker(pytest.mark.servers)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true":
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be skipped: {reason}"


_patches = pytest.StashKey[pytest.MonkeyPatch]()


def _storage_on_mariadb(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and str(callspec.params.get("storage_urls", "")).startswith("mariadb")


def _refuse_servers() -> pytest.MonkeyPatch:
    import tests.browser
    import tests.engine
    import tests.servers
    from readmission import processes

    def refuse(what: str):
        def starter(*args, **kwargs):
            raise AssertionError(f"this test starts {what}: mark it `servers` (tests/tiers.py) or keep it in-process")

        return starter

    patches = pytest.MonkeyPatch()
    patches.setattr(tests.servers.ServerProcess, "start", refuse("a server process"))
    patches.setattr(tests.servers.MariaDB, "start", refuse("MariaDB"))
    patches.setattr(tests.servers.PostgreSQL, "start", refuse("PostgreSQL"))
    patches.setattr(tests.browser, "chromium", refuse("Chromium"))
    patches.setattr(tests.engine, "container_engine", refuse("a container"))
    patches.setattr(processes, "launch", refuse("a platform process"))
    return patches
