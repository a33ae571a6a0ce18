"""The one exception type for problems a user can cause and fix, and the CLI's exit codes.

Every message names the field (parameter, file key, endpoint) and says what to do, and is
raised before anything is started or spent.
"""


class WorkbenchError(Exception):
    """A user-fixable problem: bad parameter, bad file, unreachable target, short funds."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}. Fix: {fix}")


# Exit codes of `python -m workbench` verbs, for CI (k6 exits 99 when thresholds fail).
EXIT_OK = 0  # passed (or nothing to judge)
EXIT_BROKE = 1  # the run broke: a crash, a stack that would not start
EXIT_BAD_INPUT = 2  # a WorkbenchError: bad parameter or file, fixable before anything starts
EXIT_FAILED = 99  # the verdict is FAILED (with fail_on_criteria) or a significant regression
