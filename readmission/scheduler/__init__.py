"""The EC2 data API's daily schedule on AWS: IAM roles, start/stop Lambdas, EventBridge Scheduler.

- `desired`: what should exist, computed from the settings (names, policies, function and schedule definitions);
- `reconcile`: `setup` creates or updates everything, `update_schedule` changes only the two schedules and
  `teardown` deletes what setup created. Each reads what exists, compares it with what should exist and
  touches only what differs, so a second run reports every resource `unchanged`; with `dry_run=True` it
  reports what it would do and changes nothing;
- `commands`: the arguments and output of the CLIs in `aws/scripts/` (thin wrappers);
- `instances`: `ec2_instance_state`, what the DAG's `check_source` asks before fetching a batch.
"""
