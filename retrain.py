#!/usr/bin/env python3
"""TF retrain.py's successor: `python retrain.py --image_dir DIR ...` (see --help)."""

import sys

from trxsfr.cli import main

if __name__ == "__main__":
    sys.exit(main(["retrain", *sys.argv[1:]]))
