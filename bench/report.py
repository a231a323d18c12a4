"""Write bench/RESULTS.md from the sections the scenarios returned.

Every figure in the file comes from the run that writes it; nothing is kept
from an earlier run.
"""

from scenarios import fmt


def render(meta, sections):
    """Return RESULTS.md as text."""
    out = [
        "# mockerops benchmarks",
        "",
        "Written by `%s` on %s; do not edit by hand." % (meta["command"], meta["date"]),
        "",
        "- machine: %s" % meta["machine"],
        "- load average (1 min) at start %.2f, at end %.2f (other work on the "
        "machine adds noise)" % (meta["load_start"], meta["load_end"]),
        "- hosts: N = %s, lab hosts in network namespaces, each with its own "
        "OpenSSH sshd; every tool uses the same key and the lab's known_hosts with "
        "host key checking on" % ", ".join(map(str, meta["hosts"])),
        "- runs: %d per figure (%d for the ten-step and deploy scenarios), after "
        "one unmeasured warm-up run of the ad hoc commands; figures are medians, "
        "the spread is min-max over the runs" % (meta["runs"], meta["heavy_runs"]),
        "- peers: %s" % meta["peers"],
        "- Ansible: forks = N, pipelining on, ControlPersist 60s; its control "
        "masters are closed after every run so that each run starts cold like the "
        "other tools. pyinfra: --parallel N.",
        "- total bench time: %.0f s" % meta["elapsed"],
        "",
        "## Targets",
        "",
        "| scenario | N | target | result | detail |",
        "|---|---|---|---|---|",
    ]
    for sec in sections:
        for t in sec["targets"]:
            word = {True: "met", False: "**missed**", None: "not judged"}[t["met"]]
            out.append("| %s | %s | %s | %s | %s |" % (
                sec["title"].split(":")[0], sec["n"] or "-", t["text"], word,
                t["detail"]))
        for why in sec["skipped"]:
            if not sec["rows"] and not sec["targets"]:
                out.append("| %s | %s | - | skipped | %s |" % (
                    sec["title"].split(":")[0], sec["n"] or "-", why))
    out.append("")

    for sec in sections:
        title = sec["title"] + (" (N = %d)" % sec["n"] if sec["n"] else "")
        out += ["## " + title, ""]
        if sec["rows"]:
            base = sec["rows"][0]["stat"].median
            out += ["| tool | median | spread (min-max) | runs | vs first row |",
                    "|---|---|---|---|---|"]
            for row in sec["rows"]:
                stat, unit = row["stat"], row["unit"]
                out.append("| %s | %s | %s - %s | %d | %.2fx |" % (
                    row["tool"], fmt(stat.median, unit), fmt(stat.low, unit),
                    fmt(stat.high, unit), len(stat.timings), stat.median / base))
            out.append("")
        for t in sec["targets"]:
            word = {True: "met", False: "MISSED", None: "not judged"}[t["met"]]
            out.append("- target %s: %s (%s)" % (word, t["text"], t["detail"]))
        for why in sec["skipped"]:
            out.append("- skipped: %s" % why)
        for note in sec["notes"]:
            out.append("- %s" % note)
        for label, text in sec["profiles"]:
            out += ["", "Where the time goes, %s:" % label, "", "```", text, "```"]
        out.append("")
    return "\n".join(out)
