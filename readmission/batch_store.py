"""The batch store: one folder of Parquet files per batch, under DATA_DIR or in the S3/MinIO bucket (BATCH_STORE=s3).

`fetch_batch` lands each batch there exactly as the data API served it (`batches/<n>/raw.parquet`), and
`export_batch` adds its clean rows (`batches/<n>/clean.parquet`). Files are replaced whole, never half written.
"""

from __future__ import annotations

import io

import pandas as pd

from readmission.config import Settings


def batch_key(batch: int, name: str) -> str:
    """Key of one Parquet file of a batch: `batches/<n>/<name>.parquet`."""
    return f"batches/{batch}/{name}.parquet"


def _s3(settings: Settings):
    import boto3

    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.aws_region)


def write_batch_file(settings: Settings, key: str, frame: pd.DataFrame) -> str:
    """Write `frame` as Parquet at `key` in the batch store, replacing it whole; returns its location."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    if settings.batch_store == "s3":
        client = _s3(settings)
        try:
            client.head_bucket(Bucket=settings.s3_bucket)
        except client.exceptions.ClientError:
            client.create_bucket(Bucket=settings.s3_bucket)
        client.put_object(Bucket=settings.s3_bucket, Key=key, Body=buffer.getvalue())
        return f"s3://{settings.s3_bucket}/{key}"
    path = settings.data_dir.resolve() / key
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(buffer.getvalue())
    partial.replace(path)  # atomic: a reader never sees half a file
    return str(path)


def read_batch_file(settings: Settings, key: str) -> pd.DataFrame:
    """The Parquet file at `key` in the batch store; text columns come back as objects with None for missing."""
    if settings.batch_store == "s3":
        body = _s3(settings).get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
        frame = pd.read_parquet(io.BytesIO(body))
    else:
        frame = pd.read_parquet(settings.data_dir.resolve() / key)
    return frame.astype(object).where(frame.notna(), None)
