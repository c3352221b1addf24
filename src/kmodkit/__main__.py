"""``python -m kmodkit``."""

import sys

from kmodkit.cli.main import main

sys.exit(main())
