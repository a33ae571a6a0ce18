"""The load driver: run config, load shapes, user data, the flow, the runner, the resource sampler,
wallets, preflight of a remote target and cleanup of what a run stored.

May import: `workbench.vana`, the top-level modules, and `workbench.analysis` (to render a run's
report at its end). Touches `workbench.stack` only to start it (`LocalStack`, fault plans).
"""
