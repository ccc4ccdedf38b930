"""The `dlkit` command line.

Each subcommand lives in `toolkit.commands.<module>` and is imported only when it is listed or
run; those modules import torch inside their functions, so `dlkit --help` stays fast.
"""

from __future__ import annotations

import importlib

import click

from toolkit import __version__
from toolkit.errors import DlkitError, os_error_message, user_message
from toolkit.log import configure_logging

# name -> "module:attribute"; the order is the order `dlkit --help` lists them in.
COMMANDS = {
    "data": "toolkit.commands.data:data",
    "train": "toolkit.commands.train:train",
    "eval": "toolkit.commands.evaluate:evaluate",
    "predict": "toolkit.commands.predict:predict",
    "export": "toolkit.commands.export:export",
    "quantize": "toolkit.commands.quantize:quantize",
    "deploy": "toolkit.commands.deploy:deploy",
    "bench": "toolkit.commands.bench:bench",
    "package": "toolkit.commands.package:package",
    "serve": "toolkit.commands.serve:serve",
    "tune": "toolkit.commands.tune:tune",
    "k8s": "toolkit.commands.k8s:k8s",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module on first use and turns DlkitError (and an
    operating-system error nothing caught) into a one-line message with exit status 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DlkitError as exc:
            raise click.ClickException(user_message(exc)) from None
        except OSError as exc:  # the machine's, not dlkit's: a full disk, a read-only folder
            raise click.ClickException(os_error_message(exc)) from None


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="dlkit")
@click.option("-v", "--verbose", count=True, help="Show debugging detail on stderr.")
def cli(verbose: int) -> None:
    """dlkit: train an image classifier, export, quantize, benchmark and serve it on Triton."""
    configure_logging(verbose)  # progress on stderr; a command's --json quiets it


def main() -> None:
    cli()
