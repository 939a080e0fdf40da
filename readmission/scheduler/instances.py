"""The state of the data API's EC2 instance, for the DAG."""

from __future__ import annotations

import boto3
from botocore.exceptions import ClientError

# --- for the DAG -------------------------------------------------------------------------------------

UNKNOWN_INSTANCE_ERRORS = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}


def ec2_instance_state(instance_id: str, region: str) -> str:
    """The instance's state (`running`, `stopped`, `pending`, ...); LookupError when AWS does not know it."""
    ec2 = boto3.client("ec2", region_name=region)
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in UNKNOWN_INSTANCE_ERRORS:
            raise LookupError(f"EC2 instance {instance_id!r} not found in {region}") from exc
        raise
    states = [instance["State"]["Name"] for reservation in reservations for instance in reservation["Instances"]]
    if not states:
        raise LookupError(f"EC2 instance {instance_id!r} not found in {region}")
    return states[0]


# --- command line (aws/scripts/*.py) ----------------------------------------------------------------------
