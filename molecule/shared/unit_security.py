"""`systemd-analyze security` for the tests: a unit's overall exposure as
systemd rates it on the live host (0 = fully sandboxed, 10 = not at all).

The project's promise (issue 5): every service unit it runs is at 2.0 or less.
"""
import re

MAX_EXPOSURE = 2.0
_OVERALL = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+) (\S+)")


def exposure(host, unit):
    """Return (level, verdict, report) for a unit on a testinfra host."""
    report = host.check_output("systemd-analyze security --no-pager %s", unit)
    match = _OVERALL.search(report)
    if not match:
        raise AssertionError(f"no overall exposure for {unit} in:\n{report}")
    return float(match.group(2)), match.group(3), report


def open_items(report):
    """The lines systemd-analyze marks as not sandboxed, for failure messages."""
    return "\n".join(line for line in report.splitlines() if line.startswith("✗"))


def main_pid(host, unit):
    return host.check_output("systemctl show --property=MainPID --value %s", unit)


def capabilities(host, pid):
    """Effective and bounding capability masks of a process (hex, from /proc)."""
    status = dict(
        line.split(":\t", 1) for line in host.file(f"/proc/{pid}/status").content_string.splitlines() if ":\t" in line
    )
    return int(status["CapEff"], 16), int(status["CapBnd"], 16)
