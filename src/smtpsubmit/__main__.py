"""``python -m smtpsubmit``: the command line (see :mod:`smtpsubmit.cli`)."""

import sys

from smtpsubmit.cli import main

if __name__ == "__main__":
    sys.exit(main())
