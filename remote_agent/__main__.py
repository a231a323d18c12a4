"""Entry point of the agent zipapp: ``python3 agent.pyz MODE [ARGS...]``.

Modes:
    serve ROOT            speak the framed protocol on stdin/stdout
    supervise ROOT ID     run and watch one container (detached from SSH)
    nsexec ...            join a container's namespaces and run a command
"""

import importlib
import sys

MODES = {
    "serve": "remote_agent.server",
    "supervise": "remote_agent.supervisor",
    "nsexec": "remote_agent.nsexec",
}


def main():
    """Dispatch to the module of the mode named in argv[1]."""
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        sys.stderr.write("usage: agent.pyz {%s} ...\n" % ",".join(sorted(MODES)))
        return 2
    module = importlib.import_module(MODES[sys.argv[1]])
    return module.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
