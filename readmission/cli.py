"""The `readmission` command line: one small function per subcommand, listed in SUBCOMMANDS.

To add a subcommand, write `def _name(args, settings) -> int` (and, when it takes options,
`def _name_arguments(parser)`), then add one `Subcommand(...)` line to SUBCOMMANDS. Import
heavy modules inside the function, so `readmission --help` stays fast.

Known failures (bad input, a source or database that does not answer) print one line naming
the problem on stderr and exit with status 1; argparse's usage errors exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from readmission.config import Settings, get_settings

log = logging.getLogger("readmission")


@dataclass(frozen=True)
class Subcommand:
    """A subcommand: its name, one-line help, the function that runs it and the one that declares its options."""

    name: str
    help: str
    run: Callable[[argparse.Namespace, Settings], int]
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


def _data_api(args: argparse.Namespace, settings: Settings) -> int:
    from readmission.data_api import serve

    serve(settings)
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from readmission.serving.server import serve

    serve(settings)
    return 0


def _ingest_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--batch", type=int, metavar="N", help="batch number to fetch (default: the current batch)")
    source.add_argument("--file", metavar="PATH", help="ingest every batch of a data set file (a back-fill)")
    parser.add_argument("--data-api", metavar="URL", help="data API base URL (default: DATA_API_URL)")
    parser.add_argument(
        "--batch-size", type=int, metavar="ROWS", help="rows per batch for --file (default: BATCH_SIZE)"
    )


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from readmission import ingest
    from readmission.storage import Storage

    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be 1 or more, got {args.batch}")
    if args.file and args.data_api:
        raise ValueError("--data-api does not apply to --file")
    storage = Storage.from_settings(settings)
    storage.create_schema()
    if args.file:
        results = ingest.ingest_file(storage, args.file, args.batch_size or settings.batch_size)
    else:
        url = args.data_api or settings.data_api_url
        batch = ingest.fetch(url, args.batch, timeout=settings.data_api_timeout_seconds)
        results = [ingest.ingest_batch(storage, batch, f"data-api:{url}")]
    for result in results:
        print(result)
    return 0


def _rebuild_clean(args: argparse.Namespace, settings: Settings) -> int:
    from readmission import ingest
    from readmission.storage import Storage

    storage = Storage.from_settings(settings)
    try:
        rebuilt = ingest.rebuild_clean(storage)
    finally:
        storage.dispose()
    for counts in rebuilt:
        print(f"batch {counts.batch_number}: {counts.stored} rows stored clean, {counts.rejected} quarantined")
    print(f"diabetes_clean rebuilt from diabetes_raw: {len(rebuilt)} batches, {sum(c.stored for c in rebuilt)} rows")
    return 0


def _batches(args: argparse.Namespace, settings: Settings) -> int:
    from readmission.storage import Storage

    storage = Storage.from_settings(settings)
    storage.create_schema()
    batch_log = storage.batch_log()
    if batch_log.empty:
        print("no batch ingested yet")
    else:
        print(batch_log.assign(checksum=batch_log["checksum"].str[:12]).to_string(index=False))
    return 0


def _loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("locust_args", nargs=argparse.REMAINDER, help="extra Locust options after `--`")


def _loadtest(args: argparse.Namespace, settings: Settings) -> int:
    from readmission import loadtest

    extra = args.locust_args[1:] if args.locust_args[:1] == ["--"] else args.locust_args
    return loadtest.run(settings, extra)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from readmission.registry import train_and_register

    print(train_and_register(settings))
    return 0


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every version of MODEL_NAME: aliases, test ROC-AUC, gate decision")
    actions.add_parser("promote", help="move @production to VERSION by hand").add_argument("version", metavar="VERSION")
    actions.add_parser("rollback", help="move @production back to the champion it replaced")


def _model(args: argparse.Namespace, settings: Settings) -> int:
    from readmission import registry

    actions = {"list": registry.versions_table, "rollback": registry.rollback,
               "promote": lambda settings: registry.promote(settings, args.version)}  # fmt: skip
    print(actions[args.action](settings))
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from readmission import demo

    return demo.run(settings)


def _airflow(args: argparse.Namespace, settings: Settings) -> int:
    from readmission import airflow_standalone

    return airflow_standalone.run(settings)


def _apikey_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="make a key for the program NAME; print it once, and its API_KEYS entry")
    new.add_argument("name", metavar="NAME", help="who holds the key (lower-case letters, digits, . _ -)")
    new.add_argument(
        "--rights",
        choices=["predict", "model", "predict+model"],
        default="predict+model",
        help="routes the key opens: /predict and /predict/batch, /model, or both (default)",
    )


def _apikey(args: argparse.Namespace, settings: Settings) -> int:
    from readmission.serving.auth import new_key

    key, entry = new_key(args.name)
    if args.rights != "predict+model":
        entry += f":{args.rights}"
    print(f"key: {key}")
    print(f"API_KEYS entry: {entry}")
    print(
        "The key is shown only now and stored nowhere: give it to the program (its API_KEY setting). Append the "
        "entry to API_KEYS in the inference API's Secret (entries are comma-separated).",
        file=sys.stderr,
    )
    return 0


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("demo", "the whole platform on embedded defaults: data API, DAG runs, inference API, UI", _demo),
    Subcommand("airflow", "Airflow's scheduler and UI (AIRFLOW_PORT) with diabetes_pipeline, and a data API", _airflow),
    Subcommand("data-api", "serve the data API locally (DATASET_PATH, DATA_API_HOST, DATA_API_PORT)", _data_api),
    Subcommand("serve", "serve the inference API on MODEL_URI (API_HOST, API_PORT, API_WORKERS)", _serve),
    Subcommand("ingest", "fetch, validate and store one batch, or every batch of a file", _ingest, _ingest_arguments),
    Subcommand("batches", "print the batch log", _batches),
    Subcommand(
        "rebuild-clean",
        "drop diabetes_clean and clean every stored batch again from diabetes_raw (after its columns changed)",
        _rebuild_clean,
    ),
    Subcommand(
        "loadtest",
        "headless Locust run against API_URL; exit 1 when an SLO breaks (LOADTEST_*, SLO_*)",
        _loadtest,
        _loadtest_arguments,
    ),
    Subcommand("train", "train on the stored clean data, log and register the model, run the promotion gate", _train),
    Subcommand("model", "the registered model's versions: list, promote VERSION, rollback", _model, _model_arguments),
    Subcommand("apikey", "API keys of the inference API: new NAME", _apikey, _apikey_arguments),
]


def _known_errors() -> tuple[type[Exception], ...]:
    """Failures that deserve one clear line, not a traceback: bad input and unreachable services."""
    from mlflow.exceptions import MlflowException  # a tracking server that refuses or does not answer
    from sqlalchemy.exc import SQLAlchemyError

    from readmission.dataset import DatasetError
    from readmission.sources import SourceExhausted, SourceUnavailable
    from readmission.storage import StorageError

    # SchemaError is a ValueError; LookupError is what the data API client raises for an unknown batch.
    return (ValueError, LookupError, OSError, DatasetError, SourceUnavailable, SourceExhausted, StorageError,
            SQLAlchemyError, MlflowException)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand of SUBCOMMANDS."""
    parser = argparse.ArgumentParser(prog="readmission", description="Diabetes readmission MLOps platform.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress, and the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for subcommand in SUBCOMMANDS:
        subcommand.arguments(commands.add_parser(subcommand.name, help=subcommand.help, description=subcommand.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the subcommand named in `argv` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    run = next(s.run for s in SUBCOMMANDS if s.name == args.command)
    try:
        return run(args, get_settings())
    except _known_errors() as exc:
        if args.verbose:
            log.error("traceback of the error below", exc_info=True)
        print(f"readmission {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
