"""Kept importable for external checks; the home is `workbench.vana.permission` (this name is an alias)."""

import sys

from workbench.vana import permission

sys.modules[__name__] = permission
