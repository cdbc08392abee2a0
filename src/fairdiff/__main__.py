"""``python -m fairdiff`` runs the command-line interface."""

from fairdiff.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
