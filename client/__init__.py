"""The `qlink` command-line client."""
