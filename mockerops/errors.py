"""Errors the controller raises, one base and a few areas.

    MockeropsError                  anything the CLI prints as one red line
    +-- InventoryError              inventory files, host patterns
    +-- LabError                    the local lab fleet
    +-- ConnectionFailed            SSH: refused, timed out, host key, auth
    |   +-- HostKeyError            unknown or changed host key
    +-- AgentCallError              the agent answered a call with an error
    +-- MockerfileError             rendering or parsing a Mockerfile
    +-- AppSpecError                an app.yaml that does not validate
    +-- DeployError                 planning or rolling out a deploy

Every message names where the problem is (file:line, host, container) and, where
there is one, what to do next. A traceback is printed only for bugs.
"""

from __future__ import annotations


class MockeropsError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = 4

    def __init__(
        self, message: str, *, hint: str = "", host: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.host = host

    def __str__(self) -> str:
        return self.for_host(None)

    def for_host(self, host: str | None) -> str:
        """Return the text for a line that already names host (so it is not repeated)."""
        text = self.message
        if self.host and self.host != host:
            text = f"{self.host}: {text}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class InventoryError(MockeropsError):
    """An inventory file, variable or host pattern is wrong."""


class LabError(MockeropsError):
    """The local lab cannot be built, shown or removed."""


class ConnectionFailed(MockeropsError):
    """A host could not be reached or refused us; the host counts as unreachable."""

    def __init__(self, host: str, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint, host=host)


class HostKeyError(ConnectionFailed):
    """A host key is unknown or has changed."""


class AgentCallError(MockeropsError):
    """The agent on a host answered a call with a structured error."""

    def __init__(self, host: str, kind: str, message: str, details=None) -> None:
        super().__init__(message, host=host)
        self.kind = kind
        self.details = details or {}


class MockerfileError(MockeropsError):
    """A Mockerfile failed to render or parse; the message names file and line."""


class AppSpecError(MockeropsError):
    """An app.yaml failed validation; the message names file, line and key."""


class DeployError(MockeropsError):
    """A deploy could not be planned or carried out."""
