"""The embedded system under test: anvil with our contracts, storage, the app API server (relayer)
and the personal server (inference queue), each its own OS process, plus what acts on them (the
fault schedule, the RPC fault proxy).

May import: `workbench.vana` and the top-level modules. Never imports `driver`, `analysis` or `cli`.
"""
