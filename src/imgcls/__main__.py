"""``python -m imgcls``: the same command line as ``imgcls``; also what ``torchrun ... -m imgcls train ...`` runs."""

import sys

from imgcls.cli import main

if __name__ == "__main__":
    sys.exit(main())
