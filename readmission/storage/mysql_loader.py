"""The MySQL bulk loader: a frame's rows into a MySQL (MariaDB) table, fast, inside the caller's transaction.

pymysql's executemany escapes every value in Python: seconds for the raw and clean rows of one
15,000-row batch. Here the values become text in Arrow, a whole column (or every number of the
batch) per call, and rows are joined by Arrow too; the driver formats nothing.

Where the server takes local files (`local_infile`: on in MariaDB, off by default in MySQL 8,
which our compose and Kubernetes files switch on), each chunk of rows goes as a tab-separated
file through LOAD DATA LOCAL INFILE: the server reads fields instead of parsing SQL literals,
about half the server CPU for wide rows. LOCAL turns a bad value or a duplicate key into a
warning where INSERT fails, so a load with any warning raises StorageError (and the
transaction rolls back). Elsewhere the rows go as multi-row INSERTs of SQL literals, at most
`MAX_STATEMENT_CHARS` each (below MySQL's `max_allowed_packet`). Text is escaped as the driver's
own `escape_string` escapes a backslash (it knows whether the server runs with
NO_BACKSLASH_ESCAPES); the connection speaks utf8mb4, where no multi-byte character can hide a quote.
Either way the next chunk is rendered while the server takes the current one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from readmission.storage.tables import LOCAL_FILES, StorageError

MAX_STATEMENT_CHARS = 1_000_000  # per INSERT; MySQL's max_allowed_packet is at least 4 MiB by default (64 MiB in 8.0)


@dataclass(frozen=True)
class _Format:
    """How values become text: `null` for a missing value, `text` renders the text values."""

    null: str
    text: Callable[[pa.Array], pa.Array]


def insert_mysql(
    conn: Connection, table: sa.Table, frame: pd.DataFrame, constants: dict[str, Any], chunk_rows: int
) -> None:
    """Insert `frame`'s rows, each with the same `constants`, `chunk_rows` rows per statement or file."""
    table_rows = pa.Table.from_pandas(frame, preserve_index=False)  # once: per chunk it costs ~0.2 ms a column
    chunks = [table_rows.slice(start, chunk_rows) for start in range(0, len(frame), chunk_rows)]
    if conn.connection.info.get(LOCAL_FILES):
        _load_mysql(conn, table, chunks, constants)
        return
    driver = conn.connection.dbapi_connection
    backslash_escapes = _text_of(driver.escape_string)("\\") == "\\\\"
    sql = _Format("NULL", lambda text: _quoted(text, backslash_escapes))
    constant = "".join("," + _text_of(driver.literal)(value) for value in constants.values())
    quote = conn.dialect.identifier_preparer.quote
    head = f"INSERT INTO {quote(table.name)} ({','.join(quote(c) for c in [*frame.columns, *constants])}) VALUES "

    def statements() -> Iterator[str]:
        for chunk in chunks:
            rows = pc.binary_join_element_wise(*_mysql_values(chunk, sql), ",").to_pylist()
            yield from _statements(head, (f"({row}{constant})" for row in rows), chunk_rows)

    _execute_pipelined(lambda statement: conn.exec_driver_sql(statement, None, {"no_parameters": True}), statements())


def _load_mysql(conn: Connection, table: sa.Table, chunks: list[pa.Table], constants: dict[str, Any]) -> None:
    """LOAD DATA LOCAL INFILE of each chunk, written to a tab-separated file while the server loads the previous one."""
    literal = _text_of(conn.connection.dbapi_connection.literal)
    quote = conn.dialect.identifier_preparer.quote
    columns = ",".join(quote(c) for c in chunks[0].column_names)
    assignments = ", ".join(f"{quote(name)} = {literal(value)}" for name, value in constants.items())
    # The format spelled out in hex: NO_BACKSLASH_ESCAPES changes the default escape and how '\\' reads.
    into = (
        f" INTO TABLE {quote(table.name)} CHARACTER SET utf8mb4 FIELDS TERMINATED BY X'09' ESCAPED BY X'5C'"
        f" LINES TERMINATED BY X'0A' ({columns})" + (f" SET {assignments}" if assignments else "")
    )

    def load(file: tuple[Path, int]) -> None:
        path, rows = file
        _load(conn, f"LOAD DATA LOCAL INFILE {literal(str(path))}{into}", rows, table)

    with tempfile.TemporaryDirectory(prefix="readmission-load-") as folder:
        files = (_tab_separated_file(Path(folder) / f"{n}.tsv", chunk) for n, chunk in enumerate(chunks))
        _execute_pipelined(load, files)


def _tab_separated_file(path: Path, chunk: pa.Table) -> tuple[Path, int]:
    """Write `chunk` as LOAD DATA reads it (a line per row, tab-separated, backslash escapes, \\N for missing).

    Returns (path, rows).
    """
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*_mysql_values(chunk, _LOAD_DATA), "\t"), "\n", "")
    first, end = np.frombuffer(lines.buffers()[1], dtype=np.int32)[[lines.offset, lines.offset + len(lines)]]
    with path.open("wb") as file:  # the lines' characters, one after another, are the file
        file.write(lines.buffers()[2][first:end])
    return path, chunk.num_rows


def _load(conn: Connection, statement: str, rows: int, table: sa.Table) -> None:
    """Run a LOAD DATA LOCAL statement of `rows` rows; StorageError if the server skipped or changed any value."""
    loaded = conn.exec_driver_sql(statement, None, {"no_parameters": True}).rowcount
    warnings = conn.exec_driver_sql("SHOW WARNINGS LIMIT 3", None, {"no_parameters": True}).fetchall()
    if warnings or loaded != rows:
        problems = "; ".join(str(warning[2]) for warning in warnings) or f"{loaded} of {rows} rows loaded"
        raise StorageError(f"the database did not take the rows for {table.name} as they are: {problems}")


def _execute_pipelined(run: Callable[[Any], Any], statements: Iterable[Any]) -> None:
    """`run` each statement in order, one at a time, rendering the next while the server runs the current one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sql-sender") as sender:
        running: Future | None = None
        for statement in statements:
            if running is not None:
                running.result()  # the connection serves one statement at a time
            running = sender.submit(run, statement)
        if running is not None:
            running.result()


def _text_of(function: Callable[[Any], str | bytes]) -> Callable[[Any], str]:
    """`function` with a bytes result decoded (mysqlclient returns bytes where pymysql returns str)."""

    def text(value: Any) -> str:
        result = function(value)
        return result.decode() if isinstance(result, bytes) else result

    return text


def _mysql_values(table: pa.Table, form: _Format) -> list[pa.Array]:
    """Each column of `table` as text in `form`: numbers as Arrow writes them, text as `form` renders it.

    Columns of a kind go through Arrow together, as one long array: a handful of calls per
    chunk of rows instead of a handful per column.
    """
    kinds: dict[str, list[int]] = {"float": [], "integer": [], "text": []}
    for i, column in enumerate(table.columns):
        kind = "float" if pa.types.is_floating(column.type) else "integer" if _is_integer(column.type) else "text"
        kinds[kind].append(i)
    rendered: dict[int, pa.Array] = {}
    rows = table.num_rows
    for kind, render in (("float", _floats), ("integer", _integers), ("text", form.text)):
        if kinds[kind]:
            values = pc.fill_null(
                render(pa.concat_arrays([_as(table.column(i), kind) for i in kinds[kind]])), form.null
            )
            rendered |= {i: values.slice(n * rows, rows) for n, i in enumerate(kinds[kind])}
    return [rendered[i] for i in range(table.num_columns)]


def _is_integer(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_boolean(kind)


def _as(column: pa.ChunkedArray, kind: str) -> pa.Array:
    """A column as one array of its kind's common type: float64, int64 or string."""
    return pc.cast(column.combine_chunks(), {"float": pa.float64(), "integer": pa.int64(), "text": pa.string()}[kind])


def _floats(values: pa.Array) -> pa.Array:
    """Floats as text, each distinct number rendered once (features repeat a lot); NaN and null as null."""
    numbers = values.to_numpy(zero_copy_only=False)
    if np.isinf(numbers).any():
        raise StorageError("an infinite number cannot be stored in SQL")
    codes, distinct = pd.factorize(numbers)  # NaN gets -1
    return pc.take(pc.cast(pa.array(distinct), pa.string()), pa.array(codes, mask=codes < 0))


def _integers(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.string())


def _quoted(text: pa.Array, backslash_escapes: bool) -> pa.Array:
    """Text as quoted SQL string literals, escaped for the server's mode."""
    if _holds(text, b"'\\"):
        if backslash_escapes:
            text = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), "'", "\\'")
        else:
            text = pc.replace_substring(text, "'", "''")
    return pc.binary_join_element_wise("'", text, "'", "")


def _field_escaped(text: pa.Array) -> pa.Array:
    """Text as LOAD DATA fields: backslash, tab, newline, carriage return and NUL escaped with a backslash."""
    if _holds(text, b"\\\t\n\r\0"):
        text = pc.replace_substring(text, "\\", "\\\\")
        for character, escaped in (("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\0", "\\0")):
            text = pc.replace_substring(text, character, escaped)
    return text


def _holds(text: pa.Array, characters: bytes) -> bool:
    """Whether any value of `text` holds any of `characters` (else there is nothing to escape)."""
    data = text.buffers()[2].to_pybytes() if text.buffers()[2] is not None else b""
    return any(bytes([c]) in data for c in characters)


_LOAD_DATA = _Format("\\N", _field_escaped)


def _statements(head: str, rows: Iterable[str], chunk_rows: int) -> Iterator[str]:
    """`head` followed by up to `chunk_rows` rows (and at most MAX_STATEMENT_CHARS) per statement."""
    chunk: list[str] = []
    size = len(head)
    for row in rows:
        if chunk and (len(chunk) == chunk_rows or size + len(row) > MAX_STATEMENT_CHARS):
            yield head + ",".join(chunk)
            chunk, size = [], len(head)
        chunk.append(row)
        size += len(row) + 1
    if chunk:
        yield head + ",".join(chunk)
