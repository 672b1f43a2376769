"""The auditor's checks of playbooks/audit.yml on the converged stack.

The audit runs ONCE for the module (Lynis and the TLS scan take minutes), in
check mode, into a temporary report folder; a second, quick run (no Lynis, no
TLS scan) gives the report to diff against. Set MATRIX_AUDIT_LYNIS=0 to skip
Lynis in the first run too (the Lynis test is then skipped). A scenario opts
in with MATRIX_AUDIT_TEST=1 (see below).
"""
import html.parser
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import zlib

import pytest

from conftest import REPO, hosts_of, recap, run_playbook, server

LYNIS = os.environ.get("MATRIX_AUDIT_LYNIS", "1") != "0"
# The Lynis hardening index every host must reach: set by the VM scenario (a real kernel, where
# every baseline control applies); containers report the index without a floor.
LYNIS_MIN = int(os.environ.get("MATRIX_AUDIT_LYNIS_MIN", "0"))
# Minutes of work (Lynis, testssl.sh): only the scenario that opts in runs it,
# with `verifier: {env: {MATRIX_AUDIT_TEST: "1"}}` in its molecule.yml.
pytestmark = pytest.mark.skipif(os.environ.get("MATRIX_AUDIT_TEST") != "1",
                                reason="audit tests not enabled for this scenario (MATRIX_AUDIT_TEST=1)")
PROJECT_UNITS = {
    "matrix_proxy": "nginx.service",
    "matrix_db": "postgresql@15-main.service",
    "matrix_homeserver": "matrix-synapse.service",
    "matrix_turn": "coturn.service",
}
CONTROL_STATUSES = {"pass", "fail", "waived", "not_applicable"}
# Trees an audit must not touch (Lynis' own default log included).
WATCHED = "/etc /usr /opt /var/lib/dpkg /var/lib/apt /var/lib/matrix-synapse /var/www"
MARKER = "/run/audit-test.marker"


def all_hosts():
    """Every server host (Molecule's inventory file lacks the parent group `matrix`)."""
    return sorted({h for group in PROJECT_UNITS for h in hosts_of(group)})


def run_audit(report_root, *extra):
    return run_playbook("audit.yml", "-e", f"audit_report_root={report_root}", *extra, check=True)


def report_dirs(root):
    return sorted(p for p in pathlib.Path(root).glob("audit-*") if (p / "report.json").is_file())


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    for name in all_hosts():
        server(name).check_output(f"touch {MARKER}")
    first = run_audit(root, "-e", f"audit_lynis={str(LYNIS).lower()}")
    touched = {name: server(name).check_output(
        f"find {WATCHED} -xdev -newer {MARKER} -not -type d 2>/dev/null; "
        f"find /var/log -xdev -newer {MARKER} -name 'lynis*' 2>/dev/null; true")
        for name in all_hosts()}
    dirs = report_dirs(root)
    assert len(dirs) == 1, first.stdout[-3000:] + first.stderr[-3000:]
    second = run_audit(root, "-e", "audit_lynis=false", "-e", "audit_tls_scan=false")
    dirs = report_dirs(root)
    assert len(dirs) == 2, second.stdout[-3000:] + second.stderr[-3000:]
    return {"run": first, "second": second, "dir": dirs[0], "second_dir": dirs[1], "touched": touched,
            "report": json.loads((dirs[0] / "report.json").read_text())}


def test_audit_changes_nothing_in_check_mode(audit):
    counts = recap(audit["run"].stdout)
    assert set(all_hosts()) <= set(counts), audit["run"].stdout[-2000:]
    assert all(c["changed"] == 0 and c["unreachable"] == 0 for c in counts.values()), counts
    # From the hosts' side too: no file of the watched trees is newer than the marker.
    assert all(not files.strip() for files in audit["touched"].values()), audit["touched"]


def test_audit_fails_exactly_when_a_finding_is_a_failure(audit):
    failures = [f for f in audit["report"]["findings"] if f["status"] == "fail"]
    if failures:
        assert audit["run"].returncode != 0
        assert "Fail on the findings that are failures" in audit["run"].stdout
        output = audit["run"].stdout + audit["run"].stderr
        assert all(f["id"] in output for f in failures)
    else:
        assert audit["run"].returncode == 0, audit["run"].stdout[-3000:]
    # The report is written before the failure, and the runtime printed.
    assert re.search(r"Audit runtime: [0-9.]+ s", audit["run"].stdout)


def test_report_has_every_part_for_every_host(audit):
    report = audit["report"]
    assert report["schema"] == 1
    assert {"findings", "generated", "hosts", "runtime_seconds", "summary", "tls", "totals"} <= set(report)
    assert set(report["hosts"]) == set(all_hosts())
    for name, host in report["hosts"].items():
        assert {"baseline", "units", "unit_details", "sockets", "nftables", "updates", "versions", "lynis",
                "synapse"} <= set(host), name
        assert host["baseline"]["deployed"], f"{name}: baseline controls not evaluated"
        controls = host["baseline"]["controls"]
        assert controls and all(c["status"] in CONTROL_STATUSES and c["id"] and c["reference"] for c in controls), name
        assert all(c["detail"] for c in controls if c["status"] in ("waived", "not_applicable")), name
        assert host["units"] and all(isinstance(u["exposure"], float) for u in host["units"]), name
        scored = {u["unit"] for u in host["units"]}
        for group, unit in PROJECT_UNITS.items():
            if group in host["groups"]:
                assert unit in scored and unit in host["unit_details"], f"{name}: {unit}"
        assert host["sockets"] and any(not s["loopback"] for s in host["sockets"]), name
        assert host["service_map"] == "matrix_services", f"{name}: sockets not compared with the service map"
        assert host["nftables"]["rc"] == 0 and "table" in host["nftables"]["ruleset"], name
        assert host["updates"]["lists"], f"{name}: no apt lists read"
    for name in hosts_of("matrix_homeserver"):
        settings = report["hosts"][name]["synapse"]
        assert settings["enable_registration"]["value"] is False
        assert settings["listeners"]["value"] and "database" in settings
        assert re.match(r"^1\.\d+\.\d+", report["hosts"][name]["versions"]["matrix-synapse"])
    for name in hosts_of("matrix_proxy"):
        assert re.match(r"^1\.\d+\.\d+", report["hosts"][name]["versions"]["element-web"])
        assert "nginx" in report["hosts"][name]["versions"]
    for name in hosts_of("matrix_turn"):
        assert "coturn" in report["hosts"][name]["versions"]
    for name in hosts_of("matrix_db"):
        assert "postgresql-15" in report["hosts"][name]["versions"]


def test_every_exposed_socket_is_declared_in_the_service_map(audit):
    for name, host in audit["report"]["hosts"].items():
        undeclared = [f"{s['protocol']} {s['address']}:{s['port']} {s['processes']}"
                      for s in host["sockets"] if not s["loopback"] and not s["declared_by"]]
        assert undeclared == [], name


def test_report_json_is_stable_and_sorted(audit):
    text = (audit["dir"] / "report.json").read_text()
    assert text == json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n"


@pytest.mark.skipif(not LYNIS, reason="MATRIX_AUDIT_LYNIS=0")
def test_lynis_hardening_index_is_reported_and_reaches_the_floor(audit):
    for name, host in audit["report"]["hosts"].items():
        lynis = host["lynis"]
        assert lynis["status"] == "ran", f"{name}: {lynis['status']}"
        assert isinstance(lynis["hardening_index"], int) and 0 < lynis["hardening_index"] <= 100, name
        assert all(w["id"] for w in lynis["warnings"] + lynis["suggestions"]), name
        print(f"{name}: Lynis hardening index {lynis['hardening_index']} (floor {LYNIS_MIN})")
        assert lynis["hardening_index"] >= LYNIS_MIN, (
            f"{name}: Lynis index {lynis['hardening_index']} < {LYNIS_MIN}; warnings {lynis['warnings']}")


def test_tls_scan_covers_every_public_endpoint(audit):
    tls = audit["report"]["tls"]
    endpoints = {(t["host"], t["port"]) for t in tls}
    assert {(h, 443) for h in hosts_of("matrix_proxy")} <= endpoints
    assert {(h, 5349) for h in hosts_of("matrix_turn")} <= endpoints
    for t in tls:
        where = f"{t['name']}:{t['port']}"
        assert not t["error"], where
        offered = {p for p, f in t["protocols"].items() if f.startswith("offered")}
        assert offered and offered <= {"TLS1_2", "TLS1_3"}, (where, t["protocols"])
        assert t["ciphers"], where
        assert t["certificate"]["days_left"] > 0, where
        if t["kind"] == "https":
            assert (t["hsts"] or "").startswith("max-age"), (where, t["hsts"])


def test_html_report_is_self_contained(audit):
    page = (audit["dir"] / "index.html").read_text()

    class Resources(html.parser.HTMLParser):
        found = []

        def handle_starttag(self, tag, attrs):
            if tag in ("script", "link", "img", "iframe", "object", "embed") or any(k in ("src", "href") for k, _ in attrs):
                self.found.append((tag, attrs))

    parser = Resources()
    parser.feed(page)
    assert parser.found == []
    assert "url(" not in page and "@import" not in page


def png_colours(path):
    """Distinct byte values of the decoded image rows (a blank page has very few)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IDAT":
            chunks.append(data[offset + 8:offset + 8 + length])
        offset += 12 + length
    return len(set(zlib.decompress(b"".join(chunks))))


class SummaryTable(html.parser.HTMLParser):
    """The first cell of each row of <table id="summary">."""

    def __init__(self):
        super().__init__()
        self.inside, self.cell, self.rows, self.text = False, 0, [], ""

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("id", "summary") in attrs:
            self.inside = True
        elif self.inside and tag == "tr":
            self.cell = 0
        elif self.inside and tag in ("td", "th"):
            self.cell += 1
            self.text = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag == "td" and self.cell == 1:
            self.rows.append(self.text.strip())

    def handle_data(self, data):
        if self.inside:
            self.text += data


def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed on the controller (scripts/bootstrap.sh installs it)")
    return [found, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-background-networking", "--disable-extensions"]


def test_html_report_opens_offline_in_a_browser(audit, tmp_path):
    page = (audit["dir"] / "index.html").as_uri()
    shot = tmp_path / "audit.png"
    subprocess.run(chromium() + [f"--screenshot={shot}", "--window-size=1400,1000", page],
                   capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 20_000, "no screenshot, or a blank one"
    assert png_colours(shot) > 32
    dom = subprocess.run(chromium() + ["--dump-dom", page], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    table = SummaryTable()
    table.feed(dom)
    assert sorted(table.rows) == sorted(all_hosts()), dom[:2000]
    # Kept beside the report for the auditor (and CI artefacts).
    shutil.copy(shot, audit["dir"] / "screenshot.png")


def test_diff_names_what_changed_between_two_reports(audit):
    script = [sys.executable, str(REPO / "scripts" / "audit-report.py"), "diff"]
    same = subprocess.run(script + [str(audit["dir"]), str(audit["dir"])], capture_output=True, text=True, check=False)
    assert same.returncode == 0 and same.stdout.strip() == "no change"
    # The second audit skipped Lynis and the TLS scan; the hosts did not change:
    # the diff names the Lynis and TLS evidence, and nothing else of the hosts.
    diff = subprocess.run(script + [str(audit["dir"]), str(audit["second_dir"])], capture_output=True, text=True,
                          check=False)
    assert diff.returncode == 1, diff.stdout + diff.stderr
    changed = [line for line in diff.stdout.splitlines() if line[:2] in ("+ ", "- ", "~ ")]
    assert any("/tls" in line for line in changed)
    unexpected = [line for line in changed
                  if not re.search(r"/lynis|^. /tls\[\]|TLS-|^. /summary\[\]/[^/]+/(lynis|failures|warnings)|^. /totals/", line)]
    assert unexpected == [], unexpected[:20]
    # The second run printed the same changes itself (against the latest report).
    assert f"Changes since {audit['dir'].name}" in audit["second"].stdout
