"""``python -m imgcls.cli``: the same command line as ``imgcls`` and ``python -m imgcls``."""

import sys

from imgcls.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
