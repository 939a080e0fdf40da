"""The `readmission` command line, run on embedded SQLite stores in a throw-away data folder."""

from __future__ import annotations

import subprocess
import sys

import pytest

from readmission.cli import main
from readmission.config import get_settings
from readmission.storage import Storage
from tests.factories import old_layout_clean_table
from tests.servers import REPO_ROOT, ServerProcess, free_port


@pytest.fixture
def environment(monkeypatch, tmp_path) -> dict[str, str]:
    """Settings from the environment, on a fresh data folder (get_settings' cache cleared around the test)."""
    variables = {"DATA_DIR": str(tmp_path / "data"), "RAW_DB_URL": "", "CLEAN_DB_URL": ""}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    get_settings.cache_clear()
    yield variables
    get_settings.cache_clear()


def test_ingest_a_batch_from_the_data_api_then_print_the_batch_log(environment, synthetic_data_api, capsys):
    assert main(["ingest", "--batch", "3", "--data-api", synthetic_data_api]) == 0
    assert capsys.readouterr().out == "batch 3: 1000 rows received, 1000 stored raw, 1000 stored clean, 0 quarantined\n"
    assert main(["batches"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:6] == ["batch_number", "source", "rows_received", "rows_stored", "rows_rejected", "checksum"]
    assert row.split()[:5] == ["3", f"data-api:{synthetic_data_api}", "1000", "1000", "0"] and " stored " in row


def test_ingest_every_batch_of_a_file(environment, synthetic_csv, capsys):
    assert main(["ingest", "--file", str(synthetic_csv), "--batch-size", "2500"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "batch 1: 2500 rows received, 2500 stored raw, 2500 stored clean, 0 quarantined",
        "batch 2: 1500 rows received, 1500 stored raw, 1500 stored clean, 0 quarantined",
    ]


def test_a_clean_table_of_an_older_layout_is_named_with_its_fix_and_rebuilt_from_the_raw_rows(
    environment, synthetic_csv, capsys
):
    assert main(["ingest", "--file", str(synthetic_csv), "--batch-size", "2500"]) == 0
    storage = Storage.from_settings(get_settings())
    old_layout_clean_table(storage)
    storage.dispose()
    capsys.readouterr()
    assert main(["batches"]) == 1
    assert f"table diabetes_clean in sqlite:///{environment['DATA_DIR']}" in capsys.readouterr().err
    assert main(["batches"]) == 1 and "with `readmission rebuild-clean`" in capsys.readouterr().err
    assert main(["rebuild-clean"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "batch 1: 2500 rows stored clean, 0 quarantined",
        "batch 2: 1500 rows stored clean, 0 quarantined",
        "diabetes_clean rebuilt from diabetes_raw: 2 batches, 4000 rows",
    ]
    assert main(["batches"]) == 0


def test_the_batch_log_of_a_fresh_store_says_nothing_was_ingested(environment, capsys):
    assert main(["batches"]) == 0
    assert capsys.readouterr().out == "no batch ingested yet\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["ingest", "--batch", "99"], "readmission ingest: error: data API has no batch 99"),
        (["ingest", "--batch", "0"], "readmission ingest: error: --batch must be 1 or more, got 0"),
        (["ingest", "--file", "/nowhere/diabetic_data.csv"], "readmission ingest: error: data set not found: /nowhere"),
    ],
)
def test_bad_input_is_a_one_line_error_and_exit_status_1(environment, synthetic_data_api, capsys, arguments, message):
    if "--batch" in arguments:
        arguments = [*arguments, "--data-api", synthetic_data_api]
    assert main(arguments) == 1
    assert capsys.readouterr().err.startswith(message)


def test_a_data_api_that_does_not_answer_is_a_clear_error(environment, capsys):
    assert main(["ingest", "--batch", "1", "--data-api", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "does not answer" in capsys.readouterr().err
    assert main(["batches"]) == 0 and "no batch ingested yet" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments", [["ingest", "--batch", "two"], ["ingest", "--batch", "1", "--file", "x"], ["nope"]]
)
def test_malformed_arguments_exit_with_the_usage_status(environment, arguments):
    with pytest.raises(SystemExit) as exited:
        main(arguments)
    assert exited.value.code == 2


def test_python_dash_m_readmission_lists_the_subcommands():
    completed = subprocess.run([sys.executable, "-m", "readmission", "--help"], capture_output=True, text=True,
                               cwd=REPO_ROOT, check=True)  # fmt: skip
    assert all(name in completed.stdout for name in ("data-api", "ingest", "batches"))


@pytest.mark.servers
def test_the_data_api_subcommand_serves_the_data_set(synthetic_csv, tmp_path):
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "readmission", "data-api"], f"http://127.0.0.1:{port}/health", tmp_path / "data-api.log",
        env={"DATASET_PATH": str(synthetic_csv), "DATA_API_PORT": str(port), "BATCH_SIZE": "1000"}, cwd=tmp_path,
    ).start()  # fmt: skip
    try:
        from readmission.sources import fetch_batch

        batch = fetch_batch(f"http://127.0.0.1:{port}", 4)
        assert (batch.number, batch.total_batches, batch.size) == (4, 4, 1_000)
    finally:
        server.stop()
