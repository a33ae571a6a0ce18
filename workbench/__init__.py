"""Vana load workbench: concurrent, measured runs of the Vana data-portability flow."""

from workbench.errors import WorkbenchError

__all__ = ["WorkbenchError"]
__version__ = "0.1.0"
