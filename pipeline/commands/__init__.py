"""Subcommands of the ``symprep`` command line; each module has ``add_parser`` and ``run``."""
