"""CLI commands: each module defines plain functions and a `register(app)` that adds its Typer command(s)."""
