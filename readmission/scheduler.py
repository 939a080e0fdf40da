"""The EC2 data API's daily schedule on AWS: IAM roles, start/stop Lambdas, EventBridge Scheduler.

What should exist is `readmission.scheduler_spec`; this module compares it with what does and applies the
differences.

`setup` creates or updates everything, `update_schedule` changes only the two schedules and
`teardown` deletes what setup created. Each one reads what exists, compares it with what
should exist and touches only what differs, so a second run reports every resource
`unchanged`; with `dry_run=True` it reports what it would do and changes nothing. The CLIs
in `aws/scripts/` are thin wrappers around them. `ec2_instance_state` is what the DAG's
`check_source` asks before fetching a batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
import botocore.session
from botocore.exceptions import BotoCoreError, ClientError

from readmission.config import Settings, get_settings
from readmission.scheduler_spec import (
    ACTIONS,
    LAMBDA_DIR,
    SCHEDULE_GROUP,
    Account,
    RoleSpec,
    SchedulerConfig,
    code_sha256,
    function_configuration,
    lambda_package,
    parse_instance_ids,
    role_specs,
    schedule_definition,
)

# A role AWS has just created is not visible to Lambda or Scheduler for a few seconds.
IAM_PROPAGATION_ATTEMPTS = 10
IAM_PROPAGATION_DELAY_SECONDS = 3.0

UNKNOWN_INSTANCE_ERRORS = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}
NOT_FOUND_ERRORS = {"NoSuchEntity", "ResourceNotFoundException"}


# --- comparing and applying --------------------------------------------------------------------


PAST = {"create": "created", "update": "updated", "delete": "deleted"}


@dataclass(frozen=True)
class Change:
    """What setup/update/teardown did (or would do) to one resource."""

    kind: str
    name: str
    action: str  # create | update | delete | unchanged | absent
    detail: str = ""
    dry_run: bool = False

    @property
    def changes_something(self) -> bool:
        return self.action in PAST

    def __str__(self) -> str:
        verb = self.action
        if self.changes_something:
            verb = f"would {self.action}" if self.dry_run else PAST[self.action]
        return f"{verb:<14} {self.kind:<16} {self.name}" + (f"  ({self.detail})" if self.detail else "")


def format_changes(changes: list[Change]) -> str:
    """One line per resource, then a summary line."""
    changed = sum(change.changes_something for change in changes)
    dry_run = any(change.dry_run for change in changes)
    summary = f"{changed} change(s)" + (" planned (dry run: nothing was changed)" if dry_run else "")
    return "\n".join([*map(str, changes), summary])


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _get_or_none(call: Callable[[], Any]) -> Any:
    """`call()`, or None when AWS answers that the resource does not exist."""
    try:
        return call()
    except ClientError as exc:
        if _error_code(exc) in NOT_FOUND_ERRORS:
            return None
        raise


def _retry_while_role_propagates(call: Callable[[], Any]) -> Any:
    """`call()`, retried while Lambda or Scheduler cannot yet see a role IAM has just created."""
    for attempt in range(IAM_PROPAGATION_ATTEMPTS):
        try:
            return call()
        except ClientError as exc:
            role_not_ready = (
                _error_code(exc) in {"InvalidParameterValueException", "ValidationException"}
                and "role" in str(exc).lower()
            )
            if not role_not_ready or attempt == IAM_PROPAGATION_ATTEMPTS - 1:
                raise
            time.sleep(IAM_PROPAGATION_DELAY_SECONDS)


def _matches(desired: Any, current: Any) -> bool:
    """True when `current` has `desired`; dictionaries are compared key by key (AWS adds its own keys)."""
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(_matches(value, current.get(key)) for key, value in desired.items())
    return desired == current


def _differing_fields(desired: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [key for key, value in desired.items() if not _matches(value, current.get(key))]


def _policy_document(document: str | dict) -> dict:
    """IAM answers policy documents URL-encoded; boto3 usually decodes them already."""
    return document if isinstance(document, dict) else json.loads(urllib.parse.unquote(document))


def ensure_role(iam, role: RoleSpec, dry_run: bool) -> Change:
    """Create the role, or bring its trust policy and inline policy up to date."""
    current = _get_or_none(lambda: iam.get_role(RoleName=role.name)["Role"])
    if current is None:
        if not dry_run:
            iam.create_role(
                RoleName=role.name, AssumeRolePolicyDocument=json.dumps(role.trust), Description=role.description
            )
            iam.put_role_policy(RoleName=role.name, PolicyName=role.policy_name, PolicyDocument=json.dumps(role.policy))
        return Change("iam role", role.name, "create", dry_run=dry_run)
    policy = _get_or_none(lambda: iam.get_role_policy(RoleName=role.name, PolicyName=role.policy_name))
    differing = []
    if _policy_document(current["AssumeRolePolicyDocument"]) != role.trust:
        differing.append("trust policy")
    if policy is None or _policy_document(policy["PolicyDocument"]) != role.policy:
        differing.append(f"policy {role.policy_name}")
    if not differing:
        return Change("iam role", role.name, "unchanged", dry_run=dry_run)
    if not dry_run and "trust policy" in differing:
        iam.update_assume_role_policy(RoleName=role.name, PolicyDocument=json.dumps(role.trust))
    if not dry_run and f"policy {role.policy_name}" in differing:
        iam.put_role_policy(RoleName=role.name, PolicyName=role.policy_name, PolicyDocument=json.dumps(role.policy))
    return Change("iam role", role.name, "update", ", ".join(differing), dry_run)


def ensure_function(lambda_client, name: str, configuration: dict[str, Any], package: bytes, dry_run: bool) -> Change:
    """Create the function, or update its code and/or configuration where they differ."""
    current = _get_or_none(lambda: lambda_client.get_function_configuration(FunctionName=name))
    if current is None:
        if not dry_run:
            _retry_while_role_propagates(
                lambda: lambda_client.create_function(FunctionName=name, Code={"ZipFile": package}, **configuration)
            )
            lambda_client.get_waiter("function_active_v2").wait(FunctionName=name)
        return Change("lambda function", name, "create", dry_run=dry_run)
    code_differs = current.get("CodeSha256") != code_sha256(package)
    differing = _differing_fields(configuration, current)
    if not (code_differs or differing):
        return Change("lambda function", name, "unchanged", dry_run=dry_run)
    if not dry_run and code_differs:
        lambda_client.update_function_code(FunctionName=name, ZipFile=package)
        lambda_client.get_waiter("function_updated_v2").wait(FunctionName=name)
    if not dry_run and differing:
        _retry_while_role_propagates(
            lambda: lambda_client.update_function_configuration(FunctionName=name, **configuration)
        )
        lambda_client.get_waiter("function_updated_v2").wait(FunctionName=name)
    detail = ", ".join((["code"] if code_differs else []) + differing)
    return Change("lambda function", name, "update", detail, dry_run)


def _get_schedule(scheduler, name: str) -> dict | None:
    return _get_or_none(lambda: scheduler.get_schedule(Name=name, GroupName=SCHEDULE_GROUP))


def ensure_schedule(scheduler, name: str, definition: dict[str, Any], dry_run: bool) -> Change:
    """Create the schedule, or replace it when any of its fields differs."""
    current = _get_schedule(scheduler, name)
    if current is None:
        if not dry_run:
            _retry_while_role_propagates(
                lambda: scheduler.create_schedule(Name=name, GroupName=SCHEDULE_GROUP, **definition)
            )
        return Change("schedule", name, "create", dry_run=dry_run)
    differing = _differing_fields(definition, current)
    if not differing:
        return Change("schedule", name, "unchanged", dry_run=dry_run)
    if not dry_run:
        _retry_while_role_propagates(
            lambda: scheduler.update_schedule(Name=name, GroupName=SCHEDULE_GROUP, **definition)
        )
    return Change("schedule", name, "update", ", ".join(differing), dry_run)


def _delete(kind: str, name: str, exists: bool, delete: Callable[[], Any], dry_run: bool) -> Change:
    if not exists:
        return Change(kind, name, "absent", dry_run=dry_run)
    if not dry_run:
        delete()
    return Change(kind, name, "delete", dry_run=dry_run)


def delete_schedule(scheduler, name: str, dry_run: bool) -> Change:
    exists = _get_schedule(scheduler, name) is not None
    return _delete(
        "schedule", name, exists, lambda: scheduler.delete_schedule(Name=name, GroupName=SCHEDULE_GROUP), dry_run
    )


def delete_function(lambda_client, name: str, dry_run: bool) -> Change:
    exists = _get_or_none(lambda: lambda_client.get_function_configuration(FunctionName=name)) is not None
    return _delete("lambda function", name, exists, lambda: lambda_client.delete_function(FunctionName=name), dry_run)


def delete_role(iam, name: str, dry_run: bool) -> Change:
    """Delete the role with its inline and attached policies (IAM refuses to delete a role that has any)."""

    def delete() -> None:
        for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
        for attached in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
        iam.delete_role(RoleName=name)

    exists = _get_or_none(lambda: iam.get_role(RoleName=name)) is not None
    return _delete("iam role", name, exists, delete, dry_run)


def delete_log_group(logs, name: str, dry_run: bool) -> Change:
    """Delete the log group a function wrote (Lambda creates it on first run, setup does not)."""
    groups = logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    exists = any(group["logGroupName"] == name for group in groups)
    return _delete("log group", name, exists, lambda: logs.delete_log_group(logGroupName=name), dry_run)


# --- the three commands ---------------------------------------------------------------------------


@lru_cache
def _botocore_session() -> botocore.session.Session:
    """One botocore session per process: it reads each service's (large) model file once."""
    return botocore.session.get_session()


def _session(config: SchedulerConfig, session: boto3.session.Session | None) -> boto3.session.Session:
    return session or boto3.session.Session(botocore_session=_botocore_session(), region_name=config.region)


def setup(config: SchedulerConfig, dry_run: bool = False, session: boto3.session.Session | None = None) -> list[Change]:
    """Create or update the IAM roles, both Lambda functions and both schedules; what changed, per resource."""
    if not config.instance_ids:
        raise ValueError("no EC2 instance ids: pass --instance-ids or set EC2_INSTANCE_IDS")
    session = _session(config, session)
    account = Account.of(session)
    iam, lambda_client = session.client("iam"), session.client("lambda")
    lambda_role, scheduler_role = role_specs(config, account)
    package = lambda_package(LAMBDA_DIR)
    changes = [ensure_role(iam, lambda_role, dry_run)]
    for action in ACTIONS:
        configuration = function_configuration(config, account, action)
        changes.append(ensure_function(lambda_client, config.function_name(action), configuration, package, dry_run))
    changes.append(ensure_role(iam, scheduler_role, dry_run))
    return changes + _ensure_schedules(session.client("scheduler"), config, account, dry_run)


def _ensure_schedules(scheduler, config: SchedulerConfig, account: Account, dry_run: bool) -> list[Change]:
    return [
        ensure_schedule(scheduler, config.schedule_name(action), schedule_definition(config, account, action), dry_run)
        for action in ACTIONS
    ]


def update_schedule(
    config: SchedulerConfig, dry_run: bool = False, session: boto3.session.Session | None = None
) -> list[Change]:
    """Set both schedules to the configured times and time zone; LookupError when setup has not run."""
    session = _session(config, session)
    scheduler = session.client("scheduler")
    names = [config.schedule_name(action) for action in ACTIONS]
    missing = [name for name in names if _get_schedule(scheduler, name) is None]
    if missing:
        raise LookupError(f"schedule(s) {', '.join(missing)} do not exist in {config.region}: run setup first")
    return _ensure_schedules(scheduler, config, Account.of(session), dry_run)


def teardown(
    config: SchedulerConfig, dry_run: bool = False, session: boto3.session.Session | None = None
) -> list[Change]:
    """Delete the schedules, the functions (and their log groups) and both roles; absent ones are reported."""
    session = _session(config, session)
    scheduler, lambda_client = session.client("scheduler"), session.client("lambda")
    logs, iam = session.client("logs"), session.client("iam")
    changes = [delete_schedule(scheduler, config.schedule_name(action), dry_run) for action in ACTIONS]
    for action in ACTIONS:
        changes.append(delete_function(lambda_client, config.function_name(action), dry_run))
        changes.append(delete_log_group(logs, f"/aws/lambda/{config.function_name(action)}", dry_run))
    return changes + [delete_role(iam, name, dry_run) for name in (config.scheduler_role_name, config.lambda_role_name)]


# --- for the DAG -------------------------------------------------------------------------------------


def ec2_instance_state(instance_id: str, region: str) -> str:
    """The instance's state (`running`, `stopped`, `pending`, ...); LookupError when AWS does not know it."""
    ec2 = boto3.client("ec2", region_name=region)
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except ClientError as exc:
        if _error_code(exc) in UNKNOWN_INSTANCE_ERRORS:
            raise LookupError(f"EC2 instance {instance_id!r} not found in {region}") from exc
        raise
    states = [instance["State"]["Name"] for reservation in reservations for instance in reservation["Instances"]]
    if not states:
        raise LookupError(f"EC2 instance {instance_id!r} not found in {region}")
    return states[0]


# --- command line (aws/scripts/*.py) ----------------------------------------------------------------------


def argument_parser(description: str, settings: Settings, *, instances: bool, times: bool) -> argparse.ArgumentParser:
    """The scripts' arguments; each defaults to its setting."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--region", help=f"AWS region (AWS_REGION: {settings.aws_region})")
    parser.add_argument(
        "--name-prefix",
        help=f"prefix of the functions' and schedules' names (LAMBDA_NAME_PREFIX: {settings.lambda_name_prefix})",
    )
    parser.add_argument("--lambda-role-name", help=f"LAMBDA_ROLE_NAME: {settings.lambda_role_name}")
    parser.add_argument("--scheduler-role-name", help=f"SCHEDULER_ROLE_NAME: {settings.scheduler_role_name}")
    if instances:
        current_ids = settings.ec2_instance_ids or "unset"
        parser.add_argument(
            "--instance-ids",
            type=parse_instance_ids,
            help=f"comma-separated EC2 instance ids (EC2_INSTANCE_IDS: {current_ids})",
        )
    if times:
        parser.add_argument("--timezone", help=f"IANA time zone (SCHEDULE_TIMEZONE: {settings.schedule_timezone})")
        parser.add_argument("--start-time", help=f"HH:MM (START_TIME: {settings.start_time})")
        parser.add_argument("--stop-time", help=f"HH:MM (STOP_TIME: {settings.stop_time})")
    parser.add_argument("--dry-run", action="store_true", help="print what would change and change nothing")
    return parser


def run_command(
    command: Callable[..., list[Change]],
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
    settings: Settings | None = None,
) -> int:
    """Parse `argv`, run `command` (setup, update_schedule or teardown), print the changes; the exit code."""
    args = vars(parser.parse_args(argv))
    dry_run = args.pop("dry_run")
    try:
        config = SchedulerConfig.from_settings(settings or get_settings(), **args)
        changes = command(config, dry_run=dry_run)
    except (ValueError, LookupError) as exc:
        parser.error(str(exc))
    except (ClientError, BotoCoreError) as exc:
        print(f"AWS error: {exc}", file=sys.stderr)
        return 1
    print(format_changes(changes))
    return 0
