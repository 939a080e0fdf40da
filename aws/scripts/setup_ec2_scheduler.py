#!/usr/bin/env python3
"""Create or update the EC2 data API's daily start/stop on AWS: IAM roles, two Lambda functions and
two EventBridge Scheduler schedules. Idempotent: a second run reports everything unchanged."""

import sys

from readmission import scheduler
from readmission.config import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = scheduler.argument_parser(__doc__, get_settings(), instances=True, times=True)
    return scheduler.run_command(scheduler.setup, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
