"""The arguments and output of the scripts in aws/scripts/."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from botocore.exceptions import BotoCoreError, ClientError

from readmission.config import Settings, get_settings
from readmission.scheduler.desired import SchedulerConfig, parse_instance_ids
from readmission.scheduler.reconcile import Change, format_changes


def argument_parser(description: str, settings: Settings, *, instances: bool, times: bool) -> argparse.ArgumentParser:
    """The scripts' arguments; each defaults to its setting."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--region", help=f"AWS region (AWS_REGION: {settings.aws_region})")
    parser.add_argument("--name-prefix", help="prefix of the functions' and schedules' names "
                                              f"(LAMBDA_NAME_PREFIX: {settings.lambda_name_prefix})")  # fmt: skip
    parser.add_argument("--lambda-role-name", help=f"LAMBDA_ROLE_NAME: {settings.lambda_role_name}")
    parser.add_argument("--scheduler-role-name", help=f"SCHEDULER_ROLE_NAME: {settings.scheduler_role_name}")
    if instances:
        current_ids = settings.ec2_instance_ids or "unset"
        parser.add_argument("--instance-ids", type=parse_instance_ids,
                            help=f"comma-separated EC2 instance ids (EC2_INSTANCE_IDS: {current_ids})")  # fmt: skip
    if times:
        parser.add_argument("--timezone", help=f"IANA time zone (SCHEDULE_TIMEZONE: {settings.schedule_timezone})")
        parser.add_argument("--start-time", help=f"HH:MM (START_TIME: {settings.start_time})")
        parser.add_argument("--stop-time", help=f"HH:MM (STOP_TIME: {settings.stop_time})")
    parser.add_argument("--dry-run", action="store_true", help="print what would change and change nothing")
    return parser


def run_command(command: Callable[..., list[Change]], parser: argparse.ArgumentParser,
                argv: list[str] | None = None, settings: Settings | None = None) -> int:  # fmt: skip
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

