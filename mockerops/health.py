"""Wait for a new container to pass its health check, from the controller.

The controller owns the loop (interval, retries, start period, overall deadline);
each probe is one agent call. A ``cmd`` check runs in the container through
``container.exec``; ``http`` and ``tcp`` checks are run by the agent against the
container's address with ``deploy.health``, because the container's bridge
address is reachable from its host, not from the controller.

As in Docker, failures during the start period do not count against the retries,
but a success during it ends the wait at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from mockerops.appspec import HealthCheck
from mockerops.errors import AgentCallError

log = logging.getLogger(__name__)

# Extra time the agent call gets beyond the probe's own timeout: the round trip.
CALL_SLACK = 10.0
OUTPUT_LIMIT = 2000


@dataclass
class HealthResult:
    """How a wait for health ended; output is the last probe's output."""

    healthy: bool
    attempts: int = 0
    output: str = ""
    elapsed: float = 0.0
    history: list = field(default_factory=list, repr=False)

    def summary(self) -> str:
        """Return one line for reports."""
        state = "healthy" if self.healthy else "unhealthy"
        text = f"{state} after {self.attempts} probe(s) in {self.elapsed:.1f}s"
        if not self.healthy and self.output:
            text += f": {self.output.strip()[-OUTPUT_LIMIT:]}"
        return text


def probe_params(check: HealthCheck, container: dict) -> tuple[str, dict]:
    """Return the agent method and params of one probe of check on container."""
    if check.kind == "cmd":
        return "container.exec", {"name": container["name"], "argv": list(check.cmd)}
    return "deploy.health", {
        "kind": check.kind,
        "ip": container.get("ip"),
        "port": check.port,
        "path": check.path,
        "timeout": check.timeout,
    }


async def probe(session, check: HealthCheck, container: dict) -> tuple[bool, str]:
    """Run one probe; return (passed, output). Agent errors count as failures.

    A cmd probe's output arrives as "output" events; the call's deadline is the
    probe's timeout, and the connection cancels the exec when it passes.
    """
    method, params = probe_params(check, container)
    chunks: list[bytes] = []

    def collect(event, _data, blob=b""):
        if event == "output" and blob:
            chunks.append(blob)

    if method == "container.exec":
        timeout, on_event = check.timeout, collect
    else:
        timeout, on_event = check.timeout + CALL_SLACK, None
    try:
        result = await session.call(method, params, timeout=timeout, on_event=on_event)
    except AgentCallError as exc:
        return False, exc.message
    if method == "container.exec":
        output = b"".join(chunks).decode("utf-8", "replace")[-OUTPUT_LIMIT:]
        code = (result or {}).get("exit_code")
        return code == 0, output if code == 0 else f"exit {code}: {output}"
    return bool(result.get("healthy")), str(result.get("output", ""))


async def wait_healthy(
    session,
    check: HealthCheck,
    container: dict,
    *,
    on_probe=None,
    clock=time.monotonic,
    sleep=asyncio.sleep,
) -> HealthResult:
    """Probe container until it passes, runs out of retries, or the deadline ends.

    on_probe(attempt, passed, output) is called after each probe. clock and
    sleep are injectable so the loop can be tested without waiting.
    """
    start = clock()
    grace_until = start + check.start_period
    deadline = grace_until + check.retries * (check.interval + check.timeout)
    deadline += check.timeout + CALL_SLACK
    result = HealthResult(healthy=False)
    failures = 0

    while True:
        result.attempts += 1
        passed, output = await probe(session, check, container)
        now = clock()
        result.output = output[-OUTPUT_LIMIT:]
        result.elapsed = now - start
        result.history.append((round(result.elapsed, 3), passed))
        if on_probe is not None:
            on_probe(result.attempts, passed, output)
        log.debug("%s: probe %d %s", container.get("name"), result.attempts,
                  "passed" if passed else "failed")
        if passed:
            result.healthy = True
            return result
        if now >= grace_until:
            failures += 1
        if failures >= check.retries:
            return result
        if now + check.interval > deadline:
            result.output = (
                f"health check deadline ({deadline - start:.0f}s) passed; "
                f"last probe: {result.output}"
            )
            return result
        await sleep(check.interval)
