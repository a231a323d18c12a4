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


class MockeropsError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = 4

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class InventoryError(MockeropsError):
    """An inventory file, variable or host pattern is wrong."""


class LabError(MockeropsError):
    """The local lab cannot be built, shown or removed."""


class ConnectionFailed(MockeropsError):
    """A host could not be reached or refused us; the host counts as unreachable."""

    def __init__(self, host: str, message: str, *, hint: str = "") -> None:
        super().__init__(f"{host}: {message}", hint=hint)
        self.host = host


class HostKeyError(ConnectionFailed):
    """A host key is unknown or has changed."""


class AgentCallError(MockeropsError):
    """The agent on a host answered a call with a structured error."""

    def __init__(self, host: str, kind: str, message: str, details=None) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.kind = kind
        self.details = details or {}


class MockerfileError(MockeropsError):
    """A Mockerfile failed to render or parse; the message names file and line."""


class AppSpecError(MockeropsError):
    """An app.yaml failed validation; the message names file, line and key."""


class DeployError(MockeropsError):
    """A deploy could not be planned or carried out."""
