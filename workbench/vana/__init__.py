"""What the client and the system under test share: Vana's crypto formats, the EIP-712 permission,
the contracts' ABIs, the RPC provider and transactions, the HTTP retry policy every client uses
(`retry`), and a deployment's description.

May import: `workbench.errors`, `workbench.params`, `workbench.secrets`, `workbench.steps`.
Never imports `driver`, `stack`, `analysis` or `cli`.
"""
