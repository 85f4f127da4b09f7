"""`python -m livemig`."""

from __future__ import annotations

import sys

from livemig.cli import main

sys.exit(main())
