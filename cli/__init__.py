"""The operator's command line: `.venv/bin/saga` (docs/CLI.md)."""
