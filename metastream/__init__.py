"""metastream: shared settings and the command-line interface."""
