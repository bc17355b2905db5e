"""A fault server: reads stdin forever and never answers `initialize` (startup timeout)."""

import sys

for _line in sys.stdin:
    pass
