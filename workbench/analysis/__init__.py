"""The reporting half: a pure function of a results dir. Loading, statistics, summary, criteria,
compare, plots and the HTML report.

May import: the top-level modules (`events`, `steps`, `params`, `secrets`, `errors`).
Never imports `stack` or `driver`: it reads a results dir and nothing else.
"""
