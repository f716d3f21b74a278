"""`hone data ...` commands."""

import typer

app = typer.Typer(help="Check and prepare training data.", no_args_is_help=True)
