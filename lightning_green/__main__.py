"""``python -m lightning_green`` runs the ``lightning-green`` CLI."""

from lightning_green.cli import main

if __name__ == "__main__":
    main()
