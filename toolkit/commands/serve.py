"""`dlkit serve`."""

from __future__ import annotations

import click

from toolkit.commands.output import DAY_SECONDS, finite, repo_option, repository_trust_option


@click.command()
@repo_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; 0.0.0.0 exposes the server to the network.",
)
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True)
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True)
@click.option("--model", "models", multiple=True, help="Serve only this model (repeatable).")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False),
    help="Write the server log here instead of streaming it to stderr.",
)
@click.option(
    "--timeout",
    type=float,
    default=300.0,
    show_default=True,
    callback=finite(0, DAY_SECONDS, above=True),
    help="Seconds to wait for the models to load; those still loading then are named and "
    "the others served.",
)
@click.option(
    "--drain-timeout",
    type=click.IntRange(0, 3600),
    default=10,
    show_default=True,
    help="On Ctrl-C or SIGTERM: seconds that requests in flight (and open connections) get "
    "before the server stops anyway.",
)
@repository_trust_option
def serve(
    repo, host, grpc_port, http_port, metrics_port, models, log_file, timeout, drain_timeout, trust
) -> None:
    """Run Triton Inference Server on a model repository until Ctrl-C or SIGTERM.

    Uses `tritonserver` from PATH (the NGC image: every backend), else the one in the
    nvidia-pytriton wheel (`pip install 'dlkit[serve]'`: python backend only). Models the
    server has no backend for, or that cannot load (a config that does not parse, a
    half-written version folder, an ensemble missing a step), are named and skipped; the rest
    are served. Port 0 picks a free port (the one chosen is printed). The server stops when
    dlkit does, even by kill -9; a server left behind by an older dlkit is stopped first.

    Triton runs python-backend model.py files and TorchScript with your privileges, so a
    model that holds anything `dlkit package` does not write (another model.py, TorchScript
    outside the classifier allowlist, a config that loads libraries, extra files) is refused
    unless you pass --trust.
    """
    from toolkit.errors import DlkitError
    from toolkit.triton.audit import check_repository
    from toolkit.triton.server import TritonServer, serve_until_signal
    from toolkit.triton.versions import served_text

    server = TritonServer(
        repo,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        models=list(models) or None,
        log_file=log_file,
        stream_log=log_file is None,
        exit_timeout=drain_timeout,
    )
    check_repository(repo, server.plan.load, trust)
    where = "PATH" if not server.binary.bundled else "the nvidia-pytriton wheel"
    click.echo(f"tritonserver: {server.binary.path} (from {where})")
    for name, why in server.plan.skipped.items():
        click.echo(f"skipped {name}: {why}")
    code = None
    try:
        server.start(timeout)
        failed = server.failed_models()
        for name, why in failed.items():
            click.echo(f"failed  {name}: {why}")
        ready = [n for n in server.plan.load if n not in failed]
        if not ready:
            raise DlkitError("no model loaded; see the reasons above and the server log")
        versions = server.served_versions()
        click.echo(f"serving {served_text({n: versions.get(n, []) for n in ready})}")
        click.echo(f"  gRPC     {server.grpc_url}")
        click.echo(f"  HTTP     http://{server.http_url}")
        click.echo(f"  metrics  {server.metrics_url}")
        click.echo("Ctrl-C or SIGTERM stops the server.")
        exited = serve_until_signal(server)
        if exited is not None:
            raise DlkitError(f"tritonserver exited unexpectedly with status {exited}")
        click.echo("stopping ...")
    finally:
        code = server.stop()
    click.echo(f"stopped (tritonserver exit status {code})")
