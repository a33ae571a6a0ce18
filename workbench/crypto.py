"""Kept importable for external checks; the home is `workbench.vana.crypto` (this name is an alias)."""

import sys

from workbench.vana import crypto

sys.modules[__name__] = crypto
