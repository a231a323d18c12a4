"""What a command shows: phases, a live per-host view, a recap, JSON, exit codes.

Exit codes, for every command that works on hosts:

    0   every host ok, changed or skipped
    1   a bug in mockerops (a traceback was printed)
    2   at least one host failed
    3   no host failed, at least one was unreachable
    4   bad input: inventory, pattern, app.yaml, Mockerfile, lab set-up
    5   bad command line (unknown option, missing argument)
    130 interrupted
"""

from __future__ import annotations

import json
import sys
import time
from typing import Iterable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from mockerops.fleet import HostResult, Status

EXIT_OK = 0
EXIT_BUG = 1
EXIT_FAILED = 2
EXIT_UNREACHABLE = 3
EXIT_BAD_INPUT = 4
EXIT_USAGE = 5
EXIT_INTERRUPTED = 130

STYLES = {
    Status.OK: "green",
    Status.CHANGED: "yellow",
    Status.FAILED: "red",
    Status.UNREACHABLE: "red",
    Status.SKIPPED: "cyan",
}


def exit_code(results: Iterable[HostResult]) -> int:
    """Return the exit status that sums up results."""
    statuses = {r.status for r in results}
    if Status.FAILED in statuses:
        return EXIT_FAILED
    if Status.UNREACHABLE in statuses:
        return EXIT_UNREACHABLE
    return EXIT_OK


class Reporter:
    """Plain lines: one per event, greppable, prefixed with the host."""

    def __init__(self, out=None, err=None) -> None:
        self.console = Console(file=out or sys.stdout, highlight=False, soft_wrap=True)
        self.err = Console(file=err or sys.stderr, highlight=False, soft_wrap=True)
        self.started = time.monotonic()

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Finish any live display."""

    def phase(self, text: str) -> None:
        """Announce a phase of the command."""
        self.console.print(f"--> {text}", style="bold")

    def message(self, text: str) -> None:
        """Print a line that belongs to no host."""
        self.console.print(text, markup=False)

    def host_update(self, host: str, text: str) -> None:
        """Show what a host is doing now (plain mode keeps quiet)."""

    def host_output(self, host: str, text: str) -> None:
        """Show output lines a host produced."""
        for line in text.splitlines() or [""]:
            self.console.print(f"{host}: {line}", markup=False)

    def host_result(self, result: HostResult) -> None:
        """Show how a host ended."""
        style = STYLES[result.status]
        line = f"{result.host} | {result.status.value}"
        if result.message:
            line += f" | {result.message}"
        self.console.print(line, style=style, markup=False)

    def recap(self, results: list[HostResult]) -> None:
        """Print the recap table: one row per host, counts by status."""
        table = Table(title="RECAP", title_justify="left", box=None, pad_edge=False)
        table.add_column("host")
        for status in Status:
            table.add_column(status.value, justify="right")
        for result in results:
            cells = ["1" if result.status is s else "0" for s in Status]
            table.add_row(result.host, *cells, style=STYLES[result.status])
        self.console.print(table)
        elapsed = time.monotonic() - self.started
        counts = ", ".join(
            f"{sum(r.status is s for r in results)} {s.value}" for s in Status
        )
        self.console.print(f"{len(results)} hosts in {elapsed:.1f}s: {counts}")


class LiveReporter(Reporter):
    """A terminal view: one row per host, updated in place, then plain results."""

    def __init__(self, out=None, err=None) -> None:
        super().__init__(out, err)
        self.rows: dict[str, tuple[str, str]] = {}
        self.live = Live(
            self._table(), console=self.console, transient=True, auto_refresh=False
        )
        self.live.start()

    def _table(self) -> Table:
        """Return the live table of hosts."""
        table = Table(box=None, pad_edge=False)
        table.add_column("host", style="bold")
        table.add_column("state")
        for host, (state, style) in self.rows.items():
            table.add_row(host, state, style=style)
        return table

    def _refresh(self) -> None:
        self.live.update(self._table(), refresh=True)

    def stop(self) -> None:
        """Remove the live view; results stay printed above it."""
        if self.live.is_started:
            self.live.stop()

    def host_update(self, host: str, text: str) -> None:
        """Show the host's current step in its row."""
        self.rows[host] = (text, "")
        self._refresh()

    def host_result(self, result: HostResult) -> None:
        """Print the host's result above the live view."""
        self.rows[result.host] = (result.status.value, STYLES[result.status])
        super().host_result(result)
        self._refresh()


class JsonReporter(Reporter):
    """One JSON object per line on stdout, for scripts."""

    def _emit(self, **event) -> None:
        event["time"] = round(time.time(), 3)
        sys.stdout.write(json.dumps(event, default=str) + "\n")
        sys.stdout.flush()

    def phase(self, text: str) -> None:
        """Emit a phase event."""
        self._emit(event="phase", text=text)

    def message(self, text: str) -> None:
        """Emit a message event."""
        self._emit(event="message", text=text)

    def host_update(self, host: str, text: str) -> None:
        """Emit a host progress event."""
        self._emit(event="host_update", host=host, text=text)

    def host_output(self, host: str, text: str) -> None:
        """Emit a host output event."""
        self._emit(event="host_output", host=host, text=text)

    def host_result(self, result: HostResult) -> None:
        """Emit a host result event."""
        self._emit(event="host_result", **result.to_json())

    def recap(self, results: list[HostResult]) -> None:
        """Emit the recap with counts per status."""
        counts = {s.value: sum(r.status is s for r in results) for s in Status}
        self._emit(
            event="recap",
            hosts={r.host: r.status.value for r in results},
            counts=counts,
            exit_code=exit_code(results),
        )


def make_reporter(json_output: bool = False) -> Reporter:
    """Return the reporter that fits the output: JSON, live terminal or plain."""
    if json_output:
        return JsonReporter()
    if sys.stdout.isatty():
        return LiveReporter()
    return Reporter()
