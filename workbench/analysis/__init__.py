"""The reporting half: a pure function of a results dir. Loading, statistics, HdrHistograms,
summary, criteria, compare, plots, the milestone's console lines (which the driver also prints
live) and the HTML report.

May import: the top-level modules (`events`, `steps`, `params`, `secrets`, `errors`).
Never imports `stack` or `driver`: it reads a results dir and nothing else.
"""
