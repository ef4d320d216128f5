"""`python -m loadtest [loadtest] --classrooms N ...` and `python -m loadtest sweep ...`."""

import sys

from loadtest.cli import main

sys.exit(main())
