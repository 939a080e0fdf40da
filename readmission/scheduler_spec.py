"""The EC2 data API's daily schedule as it should exist on AWS: its configuration (`SchedulerConfig`), the
account it lives in, and the IAM roles, Lambda functions and EventBridge schedules that make it.

Building these touches nothing; `readmission.scheduler` compares them with what exists and applies the
differences.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import string
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import boto3

from readmission.config import Settings

AWS_DIR = Path(__file__).resolve().parent.parent / "aws"
LAMBDA_DIR = AWS_DIR / "lambda"
POLICY_DIR = AWS_DIR / "policies"

ACTIONS = ("start", "stop")
HANDLERS = {"start": "start_ec2_instance.lambda_handler", "stop": "stop_ec2_instance.lambda_handler"}
LAMBDA_RUNTIME = "python3.12"
LAMBDA_TIMEOUT_SECONDS = 30
LAMBDA_MEMORY_MB = 128
LAMBDA_POLICY_NAME = "ec2-start-stop"
SCHEDULER_POLICY_NAME = "invoke-ec2-start-stop"
SCHEDULE_GROUP = "default"
SCHEDULE_RETRY_POLICY = {"MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 3}
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # fixed, so identical sources give an identical zip (and CodeSha256)
INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
TIME_OF_DAY = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")

# --- configuration -------------------------------------------------------------------------


def parse_instance_ids(text: str) -> tuple[str, ...]:
    """Comma-separated EC2 instance ids -> a tuple without blanks or repeats."""
    return tuple(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))


def cron_expression(time_of_day: str) -> str:
    """`HH:MM` -> the EventBridge Scheduler cron for every day at that time (`cron(55 23 * * ? *)`)."""
    match = TIME_OF_DAY.match(time_of_day.strip())
    if not match:
        raise ValueError(f"time of day must be HH:MM (00:00-23:59), got {time_of_day!r}")
    return f"cron({int(match[2])} {int(match[1])} * * ? *)"


@dataclass(frozen=True)
class SchedulerConfig:
    """What to schedule, where, and the names of everything setup creates."""

    region: str
    instance_ids: tuple[str, ...]
    timezone: str
    start_time: str
    stop_time: str
    lambda_role_name: str
    scheduler_role_name: str
    name_prefix: str

    def __post_init__(self) -> None:
        malformed = [item for item in self.instance_ids if not INSTANCE_ID.match(item)]
        if malformed:
            raise ValueError(f"malformed EC2 instance id(s): {', '.join(malformed)}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.timezone!r}") from exc
        for time_of_day in (self.start_time, self.stop_time):
            cron_expression(time_of_day)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SchedulerConfig:
        """Settings' values, with the overrides that are not None."""
        values = {
            "region": settings.aws_region,
            "instance_ids": parse_instance_ids(settings.ec2_instance_ids),
            "timezone": settings.schedule_timezone,
            "start_time": settings.start_time,
            "stop_time": settings.stop_time,
            "lambda_role_name": settings.lambda_role_name,
            "scheduler_role_name": settings.scheduler_role_name,
            "name_prefix": settings.lambda_name_prefix,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]  # each value has its field's type; a dict cannot say so

    def function_name(self, action: str) -> str:
        return f"{self.name_prefix}-{action}"

    def schedule_name(self, action: str) -> str:
        return f"{self.name_prefix}-{action}"

    def time_of(self, action: str) -> str:
        return self.start_time if action == "start" else self.stop_time


@dataclass(frozen=True)
class Account:
    """Where the resources live: partition, region and account id, and the ARNs they give."""

    partition: str
    region: str
    account_id: str

    @classmethod
    def of(cls, session: boto3.session.Session) -> Account:
        caller = session.client("sts").get_caller_identity()
        return cls(partition=caller["Arn"].split(":")[1], region=session.region_name, account_id=caller["Account"])

    def role_arn(self, name: str) -> str:
        return f"arn:{self.partition}:iam::{self.account_id}:role/{name}"

    def function_arn(self, name: str) -> str:
        return f"arn:{self.partition}:lambda:{self.region}:{self.account_id}:function:{name}"

    def instance_arn(self, instance_id: str) -> str:
        return f"arn:{self.partition}:ec2:{self.region}:{self.account_id}:instance/{instance_id}"


# --- what should exist -----------------------------------------------------------------------


def render_policy(template: str, values: dict[str, str | list[str]]) -> dict:
    """The policy template `aws/policies/<template>` with its `${placeholders}` filled.

    A string that is exactly one placeholder whose value is a list becomes that list (the
    instance ARNs); every other placeholder is substituted as text. A missing value raises
    KeyError naming the placeholder.
    """

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: fill(value) for key, value in node.items()}
        if isinstance(node, list):
            return [fill(value) for value in node]
        if isinstance(node, str):
            whole = re.fullmatch(r"\$\{(\w+)\}", node)
            if whole and isinstance(values.get(whole[1]), list):
                return list(values[whole[1]])
            return string.Template(node).substitute(values)
        return node

    return fill(json.loads((POLICY_DIR / template).read_text()))


def policy_values(config: SchedulerConfig, account: Account) -> dict[str, str | list[str]]:
    """The values the policy templates' placeholders take."""
    return {
        "partition": account.partition,
        "region": account.region,
        "account_id": account.account_id,
        "instance_arns": [account.instance_arn(item) for item in config.instance_ids],
        **{f"{action}_function": config.function_name(action) for action in ACTIONS},
        **{f"{action}_function_arn": account.function_arn(config.function_name(action)) for action in ACTIONS},
    }


@dataclass(frozen=True)
class RoleSpec:
    """An IAM role with its trust policy and its one inline policy."""

    name: str
    description: str
    trust: dict
    policy_name: str
    policy: dict


def role_specs(config: SchedulerConfig, account: Account) -> tuple[RoleSpec, RoleSpec]:
    """The Lambda execution role and the Scheduler's invoke role, policies rendered."""
    values = policy_values(config, account)
    lambda_role = RoleSpec(
        name=config.lambda_role_name,
        description="Start/stop Lambdas of the EC2 data API: only its instances and its own logs",
        trust=render_policy("lambda_trust_policy.json", values),
        policy_name=LAMBDA_POLICY_NAME,
        policy=render_policy("lambda_ec2_start_stop_policy.json", values),
    )
    scheduler_role = RoleSpec(
        name=config.scheduler_role_name,
        description="EventBridge Scheduler: invoke only the EC2 data API start/stop Lambdas",
        trust=render_policy("scheduler_trust_policy.json", values),
        policy_name=SCHEDULER_POLICY_NAME,
        policy=render_policy("scheduler_invoke_policy.json", values),
    )
    return lambda_role, scheduler_role


def lambda_package(source_dir: Path) -> bytes:
    """The Lambda zip, built in memory from the `.py` files of `aws/lambda/`; identical sources, identical bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(source_dir.glob("*.py")):
            entry = zipfile.ZipInfo(path.name, date_time=ZIP_TIMESTAMP)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, path.read_bytes())
    return buffer.getvalue()


def code_sha256(package: bytes) -> str:
    """The zip's digest as Lambda reports it in `CodeSha256` (base64 of SHA-256)."""
    return base64.b64encode(hashlib.sha256(package).digest()).decode()


def function_configuration(config: SchedulerConfig, account: Account, action: str) -> dict[str, Any]:
    """The start or stop function's configuration (everything but its code)."""
    return {
        "Role": account.role_arn(config.lambda_role_name),
        "Handler": HANDLERS[action],
        "Runtime": LAMBDA_RUNTIME,
        "Timeout": LAMBDA_TIMEOUT_SECONDS,
        "MemorySize": LAMBDA_MEMORY_MB,
        "Description": f"{action.capitalize()} the EC2 data API instance(s)",
        "Environment": {"Variables": {"EC2_INSTANCE_IDS": ",".join(config.instance_ids)}},
    }


def schedule_definition(config: SchedulerConfig, account: Account, action: str) -> dict[str, Any]:
    """The start or stop schedule: every day at its time, in the configured time zone."""
    return {
        "ScheduleExpression": cron_expression(config.time_of(action)),
        "ScheduleExpressionTimezone": config.timezone,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED",
        "Description": f"{action.capitalize()} the EC2 data API daily at {config.time_of(action)} {config.timezone}",
        "Target": {
            "Arn": account.function_arn(config.function_name(action)),
            "RoleArn": account.role_arn(config.scheduler_role_name),
            "Input": "{}",  # the function reads the instance ids from its EC2_INSTANCE_IDS variable
            "RetryPolicy": SCHEDULE_RETRY_POLICY,
        },
    }
