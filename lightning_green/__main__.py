"""``python -m lightning_green`` runs the ``lightning-green`` CLI."""

import sys

from lightning_green.cli import main

if __name__ == "__main__":
    sys.argv[0] = "python -m lightning_green"  # the usage line's name (argparse reads it), not "__main__.py"
    main()
