"""Vana's networks as its SDK knows them: the chain ids it accepts and its contract addresses.

The SDK (`@opendatalabs/vana-sdk`, `getContractAddress`) takes addresses only from this table,
the same on both chains, so a stack it can talk to must have the contracts exactly here.
"""

from __future__ import annotations

MOKSHA_CHAIN_ID = 14800
MAINNET_CHAIN_ID = 1480
SDK_CHAIN_IDS = (MOKSHA_CHAIN_ID, MAINNET_CHAIN_ID)
SDK_CONTRACTS = {
    "DataPortabilityPermissions": "0xD54523048AdD05b4d734aFaE7C68324Ebb7373eF",
    "DataPortabilityServers": "0x1483B1F634DBA75AeaE60da7f01A679aabd5ee2c",
    "DataPortabilityGrantees": "0x8325C0A0948483EdA023A1A2Fd895e62C5131234",
    "DataRegistry": "0x8C8788f98385F6ba1adD4234e551ABba0f82Cb7C",
}
