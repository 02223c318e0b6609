"""One module per CLI command (see masterkey.cli)."""
