"""``python -m securefedrec``: the command line (:mod:`securefedrec.cli`)."""

import sys

from securefedrec.cli import main

sys.exit(main())
