"""The operator's console: web pages served by the app at `/` (docs/CONSOLE.md)."""
