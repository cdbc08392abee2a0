"""The command-line interface: parses arguments and calls the library, nothing more."""
