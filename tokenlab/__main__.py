"""`python -m tokenlab ...` is the `tokenlab` command."""

import sys

from tokenlab.cli import main

sys.exit(main())
