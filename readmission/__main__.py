"""`python -m readmission`: the same command line as `readmission`."""

from readmission.cli import main

raise SystemExit(main())
