"""The embedded system under test: anvil, storage, app API server and personal server."""
