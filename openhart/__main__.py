"""``python -m openhart`` runs the command-line interface."""

from openhart.cli import app

app()
