"""The mockerops command line: verbs on top of the library, nothing more.

Known errors (MockeropsError) are printed as one red line with their hint and
exit with the status documented in report.py; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from typing import Annotated, List, Optional

import typer
import yaml
from rich.console import Console

from mockerops import __version__

try:  # typer 0.2x carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # older typer runs on click itself
    from click import ClickException

    NoArgsIsHelpError = ()
from mockerops.cli_common import (
    FleetArgs,
    InventoryOpt,
    LimitOpt,
    fleet_command,
    load,
)
from mockerops.connection import remote_shell
from mockerops.errors import MockeropsError
from mockerops.fleet import HostContext, HostResult, Status
from mockerops.report import EXIT_BUG, EXIT_INTERRUPTED, EXIT_USAGE, Reporter

app = typer.Typer(
    name="mockerops",
    help="Ship containers to plain Linux servers over SSH: no Docker, no daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"mockerops {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v info, -vv debug.")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Ship containers to plain Linux servers over SSH: no Docker, no daemon."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        logging.getLogger("asyncssh").setLevel(logging.WARNING)


@app.command()
@fleet_command(timeout=60.0)
def ping(
    pattern: Annotated[
        str, typer.Argument(metavar="PATTERN", help="Host pattern, e.g. 'web:&prod'.")
    ],
    *,
    fleet: FleetArgs,
) -> None:
    """Connect, start the agent and report its version and Python's."""
    hosts = fleet.hosts(pattern)

    async def work(ctx: HostContext, reporter: Reporter) -> HostResult:
        agent = await ctx.agent()
        hello = agent.hello
        status = Status.CHANGED if agent.uploaded else Status.OK
        note = ", agent uploaded" if agent.uploaded else ""
        message = (
            f"agent {hello.get('agent_version')} python {hello.get('python')}{note}"
        )
        return HostResult(ctx.host.name, status, message, data=hello)

    fleet.run(hosts, work, "Ping")


@app.command()
@fleet_command(timeout=600.0)
def run(
    pattern: Annotated[str, typer.Argument(metavar="PATTERN", help="Host pattern.")],
    command: Annotated[
        List[str], typer.Argument(metavar="COMMAND", help="Command, after --.")
    ],
    *,
    fleet: FleetArgs,
) -> None:
    """Run an ad hoc shell command on hosts; show output and exit status per host."""
    hosts = fleet.hosts(pattern)
    script = command[0] if len(command) == 1 else shlex.join(command)

    async def work(ctx: HostContext, reporter: Reporter) -> HostResult:
        result = await _run_remote(ctx, script, fleet.opts.call_timeout)
        output = (result.stdout or "") + (result.stderr or "")
        if output:
            reporter.host_output(ctx.host.name, output.rstrip("\n"))
        rc = result.exit_status if result.exit_status is not None else -1
        status = Status.CHANGED if rc == 0 else Status.FAILED
        return HostResult(
            ctx.host.name, status, f"rc={rc}", data={"rc": rc, "output": output}
        )

    fleet.run(hosts, work, f"Run {script!r}")


async def _run_remote(ctx: HostContext, script: str, timeout: float):
    """Run script on the host within the deadline; raise ConnectionFailed on loss."""
    import asyncio

    import asyncssh

    from mockerops.errors import ConnectionFailed

    try:
        return await asyncio.wait_for(
            ctx.conn.run(remote_shell(ctx.host, ctx.opts, script)), timeout
        )
    except (asyncio.TimeoutError, TimeoutError):
        raise MockeropsError(
            f"{ctx.host.name}: command did not finish within {timeout:g}s"
        ) from None
    except (asyncssh.Error, OSError) as exc:
        raise ConnectionFailed(ctx.host.name, f"command channel broke: {exc}") from None


@app.command()
@fleet_command(timeout=60.0)
def facts(
    pattern: Annotated[str, typer.Argument(metavar="PATTERN", help="Host pattern.")],
    *,
    fleet: FleetArgs,
) -> None:
    """Show what the engine needs from each host: kernel, cgroups, overlayfs..."""
    hosts = fleet.hosts(pattern)

    async def work(ctx: HostContext, reporter: Reporter) -> HostResult:
        agent = await ctx.agent()
        found = await agent.call("host.facts")
        if not fleet.json_output:
            reporter.host_output(
                ctx.host.name, yaml.safe_dump(found, sort_keys=True).rstrip()
            )
        missing = [k for k in ("overlayfs", "iptables", "ip") if not found.get(k)]
        if missing or found.get("uid") != 0:
            why = ", ".join(f"no {k}" for k in missing)
            if found.get("uid") != 0:
                why = ", ".join(filter(None, [why, "agent not root (use --become)"]))
            return HostResult(ctx.host.name, Status.FAILED, why, data=found)
        return HostResult(ctx.host.name, Status.OK, found["distribution"], data=found)

    fleet.run(hosts, work, "Facts")


@app.command("inventory")
def inventory_cmd(
    inventory: InventoryOpt = None,
    list_: Annotated[
        bool, typer.Option("--list", help="All groups and host vars.")
    ] = False,
    pattern: Annotated[
        Optional[str],
        typer.Option("--hosts", help="Only list hosts this pattern selects."),
    ] = None,
    limit: LimitOpt = None,
    address: Annotated[
        bool, typer.Option("--address", help="With --hosts: print addresses.")
    ] = False,
) -> None:
    """Show the resolved inventory: groups, hosts and their merged variables."""
    inv = load(inventory)
    if pattern or limit:
        for host in inv.select(pattern or "all", limit=limit):
            print(host.address if address else host.name)
        return
    print(json.dumps(inv.to_list(), indent=2, sort_keys=True, default=str))


# The verbs each sub-module adds; a command line naming one of them imports
# only that module, which keeps start-up short for fleet-wide fan-out.
SUBCOMMANDS = {
    "mockerops.cli_lab": {"lab"},
    "mockerops.cli_engine": {
        "build",
        "images",
        "rmi",
        "ps",
        "inspect",
        "prune",
        "stop",
        "start",
        "restart",
        "rm",
        "container",
    },
    "mockerops.cli_exec": {"logs", "exec"},
    "mockerops.cli_deploy": {"deploy", "rollback", "status", "unlock", "remove"},
}
BUILTIN = {"ping", "run", "facts", "inventory"}


def _mount_subcommands(argv: list[str]) -> None:
    """Add the verbs that live in their own modules (only the one argv needs)."""
    import importlib

    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb in BUILTIN:
        return
    wanted = [m for m, verbs in SUBCOMMANDS.items() if verb in verbs] or list(
        SUBCOMMANDS
    )
    for module in wanted:
        importlib.import_module(module).register(app)


def main() -> None:
    """Run the CLI, mapping errors to one line and a documented exit status."""
    _mount_subcommands(sys.argv[1:])
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        code = app(standalone_mode=False)
    except MockeropsError as exc:
        where = f"{exc.host}: " if exc.host else ""
        err.print(f"error: {where}{exc.message}", style="red", markup=False)
        if exc.hint:
            err.print(f"  hint: {exc.hint}", markup=False)
        code = exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        code = EXIT_INTERRUPTED
    except NoArgsIsHelpError as exc:
        exc.show()
        code = 0
    except ClickException as exc:
        exc.show()
        code = EXIT_USAGE
    except KeyboardInterrupt:
        err.print("interrupted", style="red")
        code = EXIT_INTERRUPTED
    except Exception:
        import traceback

        traceback.print_exc()
        err.print("error: this is a bug in mockerops; please report it", style="red")
        code = EXIT_BUG
    sys.exit(code or 0)
