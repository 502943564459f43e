"""``python -m ssgr``: the ssgr command line."""

import sys

from ssgr.cli import main

sys.exit(main())
