"""Errors the agent reports to the controller as structured replies.

    AgentError              base: kind, message, details
    +-- NotFound            no such image, layer, container, volume
    +-- Conflict            a name taken, a port published, an image in use
    +-- InvalidRequest      a parameter that makes no sense
    +-- CommandFailed       a host command (ip, iptables, a RUN step) failed
"""


class AgentError(Exception):
    """An error with a kind the controller can act on and a message for users."""

    kind = "error"

    def __init__(self, message, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self):
        """Return the error as the JSON object sent in a reply."""
        return {"kind": self.kind, "message": self.message, "details": self.details}


class NotFound(AgentError):
    """A named thing does not exist on this host."""

    kind = "not_found"


class Conflict(AgentError):
    """The request clashes with what exists on this host."""

    kind = "conflict"


class InvalidRequest(AgentError):
    """A request parameter is malformed or out of range."""

    kind = "invalid"


class CommandFailed(AgentError):
    """A command run on the host exited non-zero."""

    kind = "command_failed"

    def __init__(self, argv, returncode, output="", message=None):
        text = message or "%s exited %d: %s" % (
            " ".join(argv), returncode, output.strip()[-2000:]
        )
        super().__init__(text, argv=list(argv), returncode=returncode)
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
