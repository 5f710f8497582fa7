"""``python -m lightning_green`` runs the ``lightning-green`` CLI."""

from lightning_green.cli import main

main()
