"""Options and plumbing shared by every CLI command that works on hosts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Awaitable, Callable, Optional

import typer

from mockerops.connection import ConnectOptions
from mockerops.errors import InventoryError
from mockerops.fleet import HostContext, HostResult, run_on_hosts
from mockerops.inventory import Host, Inventory, load_inventory
from mockerops.report import exit_code, make_reporter

DEFAULT_INVENTORY = "inventories/lab.yaml"

InventoryOpt = Annotated[
    Optional[Path],
    typer.Option(
        "-i",
        "--inventory",
        help="Inventory file (YAML or INI). Default: $MOCKEROPS_INVENTORY, "
        f"else {DEFAULT_INVENTORY}.",
        show_default=False,
    ),
]
LimitOpt = Annotated[
    Optional[str], typer.Option("--limit", "-l", help="Narrow the hosts further.")
]
ForksOpt = Annotated[
    int, typer.Option("--forks", "-f", min=1, help="Hosts worked on at once.")
]
ConnectTimeoutOpt = Annotated[
    float, typer.Option("--connect-timeout", min=0.1, help="Seconds to connect.")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", "-T", min=0.1, help="Seconds per call on a host.")
]
AcceptKeysOpt = Annotated[
    bool,
    typer.Option(
        "--accept-new-host-keys",
        help="Record host keys not yet in known_hosts (changed keys stay refused).",
    ),
]
BecomeOpt = Annotated[
    Optional[bool],
    typer.Option("--become/--no-become", help="Run the agent through sudo -n."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines on stdout.")]


def inventory_path(given: Path | None) -> Path:
    """Return the inventory to use: -i, else $MOCKEROPS_INVENTORY, else the default."""
    if given is not None:
        return given
    return Path(os.environ.get("MOCKEROPS_INVENTORY") or DEFAULT_INVENTORY)


def load(given: Path | None) -> Inventory:
    """Load the inventory, with a remedy when the default is missing."""
    path = inventory_path(given)
    if given is None and not path.exists():
        raise InventoryError(
            f"no inventory given and {path} does not exist",
            hint="pass -i FILE, set MOCKEROPS_INVENTORY, or run 'mockerops lab up'",
        )
    return load_inventory(path)


def select(given: Path | None, pattern: str, limit: str | None) -> list[Host]:
    """Load the inventory and return the hosts pattern (and limit) select."""
    return load(given).select(pattern, limit=limit)


def connect_options(
    forks: int, connect_timeout: float, timeout: float, accept: bool, become
) -> ConnectOptions:
    """Return ConnectOptions from the common flags."""
    return ConnectOptions(
        connect_timeout=connect_timeout,
        call_timeout=timeout,
        accept_new_host_keys=accept,
        become=become,
        forks=forks,
    )


def run_fleet(
    hosts: list[Host],
    work: Callable[[HostContext], Awaitable[HostResult]],
    opts: ConnectOptions,
    json_output: bool,
    title: str,
) -> None:
    """Run work on hosts with a live view and a recap; exit with the summed status."""
    with make_reporter(json_output) as reporter:
        reporter.phase(f"{title} on {len(hosts)} host(s)")
        results = asyncio.run(
            run_on_hosts(hosts, lambda c: work(c, reporter), opts, reporter)
        )
        reporter.stop()
        reporter.recap(results)
    raise typer.Exit(exit_code(results))
