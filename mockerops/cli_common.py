"""Options and plumbing shared by every CLI command that works on hosts."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import typing
from dataclasses import dataclass
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
    int, typer.Option("--forks", min=1, help="Hosts worked on at once.")
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
        if os.environ.get("MOCKEROPS_INVENTORY"):
            raise InventoryError(
                f"MOCKEROPS_INVENTORY names {path}, which does not exist",
                hint="fix MOCKEROPS_INVENTORY or pass -i FILE",
            )
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


@dataclass
class FleetArgs:
    """The common flags of a fleet command, resolved: inventory, limit, options."""

    inventory: Path | None
    limit: str | None
    opts: ConnectOptions
    json_output: bool = False

    def hosts(self, pattern: str) -> list[Host]:
        """Return the hosts pattern selects, narrowed by --limit."""
        return select(self.inventory, pattern, self.limit)

    def run(self, hosts: list[Host], work, title: str) -> None:
        """Run work on hosts with a live view and a recap; exit with the status."""
        run_fleet(hosts, work, self.opts, self.json_output, title)


def fleet_command(*, timeout: float = 60.0, json_output: bool = True):
    """Give a command the common fleet flags and pass them as ``fleet: FleetArgs``.

    Typer reads a command's flags from its signature, so the wrapper's signature
    is the command's own parameters (without ``fleet``) followed by the shared
    ones; every fleet command then takes -i, --limit, --forks and the rest alike.
    """
    common = [
        ("inventory", InventoryOpt, None),
        ("limit", LimitOpt, None),
        ("forks", ForksOpt, 50),
        ("connect_timeout", ConnectTimeoutOpt, 10.0),
        ("timeout", TimeoutOpt, timeout),
        ("accept_new_host_keys", AcceptKeysOpt, False),
        ("become", BecomeOpt, None),
    ]
    if json_output:
        common.append(("json_output", JsonOpt, False))

    def decorate(func):
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.name != "fleet"
        ]
        shared = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=annotation,
            )
            for name, annotation, default in common
        ]

        @functools.wraps(func)
        def command(**kwargs):
            flags = {name: kwargs.pop(name) for name, _, _ in common}
            fleet = FleetArgs(
                inventory=flags["inventory"],
                limit=flags["limit"],
                opts=connect_options(
                    flags["forks"],
                    flags["connect_timeout"],
                    flags["timeout"],
                    flags["accept_new_host_keys"],
                    flags["become"],
                ),
                json_output=flags.get("json_output", False),
            )
            return func(fleet=fleet, **kwargs)

        del command.__wrapped__
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        command.__signature__ = inspect.Signature(params + shared)
        command.__annotations__ = {p.name: p.annotation for p in params + shared}
        return command

    return decorate
