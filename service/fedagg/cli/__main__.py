"""``python -m fedagg.cli``."""

import sys

from fedagg.cli import main

sys.exit(main())
