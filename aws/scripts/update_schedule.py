#!/usr/bin/env python3
"""Change the start/stop times (or time zone) of the EC2 data API's schedules; nothing else is touched."""

import sys

from readmission import scheduler
from readmission.config import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = scheduler.argument_parser(__doc__, get_settings(), instances=False, times=True)
    return scheduler.run_command(scheduler.update_schedule, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
