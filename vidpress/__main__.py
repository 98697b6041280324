"""`python -m vidpress ...` runs the command line (also under `accelerate launch -m vidpress`)."""

import sys

from vidpress.cli import main

sys.exit(main())
