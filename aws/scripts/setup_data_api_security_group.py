#!/usr/bin/env python3
"""Create or check the data API's security group: TCP DATA_API_PORT open only to DATA_API_ALLOWED_CIDR
(the Airflow workers' egress), never to 0.0.0.0/0. Idempotent: a second run reports it unchanged."""

import sys

from readmission.ec2_security import main

if __name__ == "__main__":
    sys.exit(main())
