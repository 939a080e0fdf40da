"""Start or stop the data API's EC2 instances, idempotently; shared by both Lambda handlers.

Deployed as a plain Lambda zip next to the handlers: only boto3 and the standard library.
Instance ids come from the event (`{"instance_ids": [...]}` or a comma-separated string) or,
when the event has none, from the `EC2_INSTANCE_IDS` environment variable.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)

INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
UNKNOWN_INSTANCE_ERRORS = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}

# Per action: states that already are (or are becoming) the target, and the one state it acts on.
# Anything else (e.g. starting a `stopping` instance) is a conflict AWS would refuse.
ACTIONS = {
    "start": {"done": {"running", "pending"}, "from": "stopped"},
    "stop": {"done": {"stopped", "stopping"}, "from": "running"},
}


class RequestError(ValueError):
    """The caller asked for something wrong: no ids, a malformed id, or an unknown instance."""


def ec2_client():
    """The EC2 client of the function's region (Lambda sets AWS_REGION)."""
    return boto3.client("ec2")


def requested_instance_ids(event: Any) -> list[str]:
    """Instance ids from the event, else from EC2_INSTANCE_IDS; RequestError when none or malformed."""
    raw = event.get("instance_ids") if isinstance(event, dict) else None
    if raw is None:
        raw = os.environ.get("EC2_INSTANCE_IDS", "")
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise RequestError("instance_ids must be a list of strings or a comma-separated string")
    ids = list(dict.fromkeys(item.strip() for item in raw if item.strip()))
    if not ids:
        raise RequestError("no instance ids: pass event['instance_ids'] or set EC2_INSTANCE_IDS")
    malformed = [item for item in ids if not INSTANCE_ID.match(item)]
    if malformed:
        raise RequestError(f"malformed instance id(s): {', '.join(malformed)}")
    return ids


def current_states(ec2, ids: list[str]) -> dict[str, str]:
    """State name of each instance; RequestError naming the ids AWS does not know."""
    try:
        pages = ec2.get_paginator("describe_instances").paginate(InstanceIds=ids)
        states = {
            instance["InstanceId"]: instance["State"]["Name"]
            for page in pages
            for reservation in page["Reservations"]
            for instance in reservation["Instances"]
        }
    except ClientError as exc:
        if exc.response["Error"]["Code"] in UNKNOWN_INSTANCE_ERRORS:
            raise RequestError(exc.response["Error"]["Message"]) from exc
        raise
    unknown = [item for item in ids if item not in states]
    if unknown:
        raise RequestError(f"unknown instance id(s): {', '.join(unknown)}")
    return states


def change_states(ec2, action: str, ids: list[str]) -> dict[str, str]:
    """Ask EC2 to start or stop `ids`; the state each one reports right after."""
    if not ids:
        return {}
    call = ec2.start_instances if action == "start" else ec2.stop_instances
    key = "StartingInstances" if action == "start" else "StoppingInstances"
    return {item["InstanceId"]: item["CurrentState"]["Name"] for item in call(InstanceIds=ids)[key]}


def outcome(action: str, state: str) -> str:
    """`changed` when the action applies to `state`, `unchanged` when already done, else `conflict`."""
    rule = ACTIONS[action]
    if state == rule["from"]:
        return "changed"
    return "unchanged" if state in rule["done"] else "conflict"


NOTES = {
    "changed": "{action} requested",
    "unchanged": "already {state}: nothing to do",
    "conflict": "cannot {action} an instance that is {state}",
}


def instance_report(instance_id: str, previous: str, current: str, action: str) -> dict[str, Any]:
    """One instance's line of the result: previous and current state, the outcome and a note."""
    result = outcome(action, previous)
    return {
        "instance_id": instance_id,
        "previous_state": previous,
        "current_state": current,
        "outcome": result,
        "note": NOTES[result].format(action=action, state=previous),
    }


def control_instances(action: str, event: Any) -> dict[str, Any]:
    """Bring the requested instances to the action's target state; a JSON-ready result.

    statusCode 200 when every instance is (or is becoming) the target state, 409 when one is
    in a state the action cannot leave (the others are still handled), 400 for missing,
    malformed or unknown ids, 500 when AWS fails. Every result is logged.
    """
    try:
        ids = requested_instance_ids(event)
        ec2 = ec2_client()
        previous = current_states(ec2, ids)
        to_change = [item for item in ids if outcome(action, previous[item]) == "changed"]
        current = {**previous, **change_states(ec2, action, to_change)}
    except RequestError as exc:
        logger.error("%s refused: %s", action, exc)
        return {"statusCode": 400, "action": action, "error": str(exc)}
    except (ClientError, BotoCoreError) as exc:
        logger.exception("%s failed: AWS error", action)
        return {"statusCode": 500, "action": action, "error": f"AWS error: {exc}"}
    instances = [instance_report(item, previous[item], current[item], action) for item in ids]
    conflict = any(item["outcome"] == "conflict" for item in instances)
    result = {"statusCode": 409 if conflict else 200, "action": action, "instances": instances}
    logger.log(logging.WARNING if conflict else logging.INFO, "%s", json.dumps(result))
    return result
