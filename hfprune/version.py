"""The version of hfprune, in a module of its own so that what records it (checkpoints, cards) need not import
the package root."""

__version__ = "0.1.0"
