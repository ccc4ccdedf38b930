"""Subcommands of the `dlkit` CLI. Modules here must not import torch at import time."""
