"""``python -m ssgr.prune MODEL --calib CALIB.jsonl --out DIR ...``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
