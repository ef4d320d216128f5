"""`python -m loadtest [loadtest] --classrooms N ...` and `python -m loadtest sweep ...`."""

import sys

from .cli import main

sys.exit(main())
