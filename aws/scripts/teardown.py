#!/usr/bin/env python3
"""Delete everything setup_ec2_scheduler.py created: schedules, Lambda functions (and their logs), IAM roles."""

import sys

from readmission import scheduler
from readmission.config import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = scheduler.argument_parser(__doc__, get_settings(), instances=False, times=False)
    return scheduler.run_command(scheduler.teardown, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
