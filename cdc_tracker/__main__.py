"""``python -m cdc_tracker`` is ``cdc-tracker``."""

import sys

from cdc_tracker.cli import main

sys.exit(main())
