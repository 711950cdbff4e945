import sys

from trxsfr.cli import main

sys.exit(main())
