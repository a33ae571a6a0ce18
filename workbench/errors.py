"""The one exception type for problems a user can cause and fix.

Every message names the field (parameter, file key, endpoint) and says what to do, and is
raised before anything is started or spent.
"""


class WorkbenchError(Exception):
    """A user-fixable problem: bad parameter, bad file, unreachable target, short funds."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}. Fix: {fix}")
