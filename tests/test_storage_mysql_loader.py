"""The MySQL bulk loader (readmission.storage.mysql_loader) through Storage, on a real MariaDB server (and SQLite
where a test runs on every store): text that breaks naive SQL, server modes, packet limits, local files or INSERTs."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from readmission.storage import MAX_STATEMENT_CHARS, Storage
from tests.factories import encounter_rows, write_raw_and_clean, writes_rows_into


@pytest.fixture
def tricky_text() -> list[str]:
    """Values that break naive SQL: quotes, backslashes, control characters, format markers, injections."""
    return [
        "O'Brien",
        'say "hi"',
        "back\\slash\\",
        "\\'",
        "new\nline\r",
        "ctrl-z \x1a",
        "%s %(x)s",
        "NULL",
        "",
        "Ærø 😀",
        "nul \x00 byte",
        "'); DROP TABLE diabetes_raw; --",
    ]


def test_text_with_quotes_backslashes_control_characters_and_unicode_round_trips(storage, tricky_text):
    frame = encounter_rows(len(tricky_text), seed=2)
    frame["medical_specialty"] = tricky_text
    storage.write_raw(1, frame, source="test")
    assert storage.read_raw_batch(1)["medical_specialty"].tolist() == tricky_text


def test_text_round_trips_on_a_mysql_server_without_backslash_escapes(mariadb_urls, tricky_text):
    storage = Storage(mariadb_urls["raw_data_db"], mariadb_urls["clean_data_db"])

    @sa.event.listens_for(storage.raw, "connect")
    def no_backslash_escapes(dbapi_connection, record):
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")

    storage.create_schema()
    frame = encounter_rows(len(tricky_text), seed=2)
    frame["medical_specialty"] = tricky_text
    storage.write_raw(1, frame, source="test")
    assert storage.read_raw_batch(1)["medical_specialty"].tolist() == tricky_text
    storage.dispose()


def test_rows_too_large_for_one_packet_are_split_across_statements(storage_urls):
    storage = Storage(*storage_urls, chunk_rows=1_000)
    storage.create_schema()
    frame = encounter_rows(15, seed=22)
    frame["medical_specialty"] = [chr(ord("a") + i) * (MAX_STATEMENT_CHARS // 3) for i in range(15)]
    storage.write_raw(1, frame, source="test")  # 5 MB of values, above the test server's 4 MiB max_allowed_packet
    assert storage.read_raw_batch(1)["medical_specialty"].tolist() == frame["medical_specialty"].tolist()
    storage.dispose()


@pytest.mark.parametrize(
    ("url_query", "server_local_infile", "statement"),
    [
        ("", 1, "LOAD DATA"),
        ("?local_infile=0", 1, "INSERT INTO"),
        ("", 0, "INSERT INTO"),
    ],
)
def test_mysql_rows_go_as_local_files_where_client_and_server_allow_it(
    mariadb, url_query, server_local_infile, statement
):
    mariadb.reset()
    mariadb.sql(f"SET GLOBAL local_infile = {server_local_infile}")
    try:
        storage = Storage(
            mariadb.url("raw_data_db") + url_query, mariadb.url("clean_data_db") + url_query, chunk_rows=40
        )
        storage.create_schema()
        sent = []
        sa.event.listen(storage.clean, "before_cursor_execute", lambda conn, cursor, sql, *rest: sent.append(sql))
        written = write_raw_and_clean(storage, 1, encounter_rows(100, seed=27))[1]
        storage.dispose()
    finally:
        mariadb.sql("SET GLOBAL local_infile = 1")
    writes = [sql for sql in sent if writes_rows_into(sql, "diabetes_clean")]
    assert len(writes) == 3 and all(sql.startswith(statement) for sql in writes)  # 100 rows, 40 per statement
    assert written.stored == 100 and len(storage.read_clean_batch(1)) == 100
