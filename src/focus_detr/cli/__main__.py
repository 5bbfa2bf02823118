"""``python -m focus_detr.cli`` (e.g. under ``torchrun``)."""

import sys

from focus_detr.cli import main

sys.exit(main())
