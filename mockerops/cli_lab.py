"""The ``mockerops lab`` commands: up, down and status of the local lab fleet.

Errors are printed here the way ``mockerops.cli.main`` prints them (one red line,
then the hint), so ``lab_app`` behaves the same when run on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from mockerops.errors import MockeropsError
from mockerops.lab import DEFAULT_NAME, lab_down, lab_status, lab_up

lab_app = typer.Typer(
    help="Run a local fleet: hosts in network namespaces, each with its own sshd.",
    no_args_is_help=True,
)

NameOpt = Annotated[
    str, typer.Option("--name", help="Lab and group name; hosts are NAME1, NAME2...")
]
DirOpt = Annotated[
    Optional[Path],
    typer.Option("--dir", help="Lab dir (default: ~/.mockerops/lab/NAME)."),
]


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Turn a known error into one red line on stderr and its exit status."""
    try:
        yield
    except MockeropsError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        if exc.hint:
            typer.echo(f"  hint: {exc.hint}", err=True)
        raise typer.Exit(exc.exit_code) from None


@lab_app.command("up")
def up(
    hosts: Annotated[
        Optional[int],
        typer.Option("-n", "--hosts", help="Host count (default: current, or 3)."),
    ] = None,
    name: NameOpt = DEFAULT_NAME,
    subnet: Annotated[
        Optional[str],
        typer.Option(help="IPv4 subnet (default: current, or 10.200.0.0/24)."),
    ] = None,
    lab_dir: DirOpt = None,
    inventory: Annotated[
        Optional[Path],
        typer.Option(help="Inventory to write (default: inventories/NAME.yaml)."),
    ] = None,
) -> None:
    """Create the lab, or repair and resize it, and write its inventory."""
    with _reported():
        info = lab_up(
            name=name, n=hosts, subnet=subnet, lab_dir=lab_dir, inventory_path=inventory
        )
    for action in info.actions:
        typer.echo(f"{action.verb.capitalize()}: {action.host} {action.address}")
    typer.echo(f"Inventory: {info.inventory_path}")
    typer.echo(f"Key: {info.key_path}")
    typer.echo(f"Known hosts: {info.known_hosts_path}")


@lab_app.command("down")
def down(
    name: NameOpt = DEFAULT_NAME,
    lab_dir: DirOpt = None,
    inventory: Annotated[
        Optional[Path], typer.Option(help="Inventory to remove, if it is this lab's.")
    ] = None,
) -> None:
    """Remove every process, mount, namespace, link and file of the lab."""
    with _reported():
        removed = lab_down(name=name, lab_dir=lab_dir, inventory_path=inventory)
    if not removed:
        typer.echo(f"Nothing to remove: no lab named {name!r}")
    for item in removed:
        typer.echo(f"Removed: {item}")


@lab_app.command("status")
def status(name: NameOpt = DEFAULT_NAME, lab_dir: DirOpt = None) -> None:
    """Show each host of the lab: address, namespace and whether sshd answers."""
    with _reported():
        statuses = lab_status(name=name, lab_dir=lab_dir)
    rows = [("HOST", "ADDRESS", "NETNS", "SSHD")]
    for s in statuses:
        if not s.netns_present:
            sshd = "no netns"
        elif s.sshd_pid is None:
            sshd = "stopped"
        else:
            state = "running" if s.answers else "not answering"
            sshd = f"{state} (pid {s.sshd_pid})"
        rows.append((s.name, s.address, s.netns, sshd))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        typer.echo("  ".join([*cells, row[3]]))


def register(app: typer.Typer) -> None:
    """Mount the lab commands on the main CLI as ``mockerops lab``."""
    app.add_typer(lab_app, name="lab")
