"""The ``freshet`` command line: one module per command, wired by :mod:`pipeline.cli.main`."""
