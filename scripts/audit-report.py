#!/usr/bin/env python3
"""The audit report of playbooks/audit.yml (docs/audit.md). Standard library only.

  audit-report.py tls --out DIR --target HOST,NAME,ADDRESS,PORT,KIND ... [--ca-file FILE]
      scan each TLS endpoint with testssl.sh (Debian package), raw JSON kept in DIR/tls/
  audit-report.py render --out DIR [--started EPOCH] [--tls-min-days N] [--evidence FILE] < evidence.json
      turn the evidence the playbook collected (stdin, kept as DIR/evidence.json) and DIR/tls/
      into DIR/report.json and DIR/index.html; print the summary and the changes since the
      previous report
  audit-report.py diff OLD NEW
      what changed between two reports (folders or report.json files); exit 1 when any
"""
import argparse
import concurrent.futures
import datetime
import difflib
import html
import ipaddress
import json
import pathlib
import re
import shutil
import subprocess
import sys
import time

SCHEMA = 1
# Keys that differ on every run and say nothing about the hosts: left out of diffs.
VOLATILE = {"generated", "runtime_seconds", "report_dir", "previous_report", "changes"}
PROJECT_UNITS = {
    "nginx.service": "matrix_proxy",
    "postgresql@15-main.service": "matrix_db",
    "matrix-synapse.service": "matrix_homeserver",
    "coturn.service": "matrix_turn",
}
# Units of the project whose names vary: Synapse's workers (docs/workers.md) and Redis.
PROJECT_UNIT_PATTERN = re.compile(r"^(matrix-synapse-worker@[a-z0-9_]+|redis-server)\.service$")
UNIT_EXPOSURE_MAX = 2.0


def is_project_unit(unit):
    return unit in PROJECT_UNITS or bool(PROJECT_UNIT_PATTERN.match(unit))
# Synapse settings whose hardened value the project sets (roles/synapse/vars/main.yml).
SYNAPSE_EXPECTED = {
    "enable_registration": False,
    "allow_guest_access": False,
    "enable_metrics": False,
    "url_preview_enabled": False,
    "report_stats": False,
    "allow_public_rooms_over_federation": False,
    "allow_public_rooms_without_auth": False,
}
TLS_FAIL_SEVERITIES = {"HIGH", "CRITICAL", "FATAL"}
TLS_WARN_SEVERITIES = {"MEDIUM"}


# --- TLS scan ----------------------------------------------------------------

def tls_label(host, name, port):
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{host}_{name}_{port}")


def scan_one(target, out, ca_file, testssl):
    host, name, address, port, kind = target.split(",")
    raw = out / "tls" / (tls_label(host, name, port) + ".json")
    raw.unlink(missing_ok=True)
    # Protocols, server picks and the cipher list per protocol, certificate
    # chain and expiry; HTTP headers (HSTS) only where HTTP is spoken.
    checks = ["-p", "-P", "-E", "-S"] + (["-h"] if kind == "https" else [])
    argv = [testssl, "--quiet", "--color", "0", "--warnings", "off", "--connect-timeout", "10",
            "--openssl-timeout", "10", "--jsonfile", str(raw), "--ip", address, *checks]
    if ca_file:
        argv += ["--add-ca", ca_file]
    argv.append(f"{name}:{port}" if kind != "https" else f"https://{name}:{port}/")
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return {"host": host, "name": name, "address": address, "port": int(port), "kind": kind,
            "raw": raw.name, "seconds": round(time.monotonic() - started, 1),
            "error": "" if raw.is_file() else (proc.stdout + proc.stderr)[-2000:]}


def cmd_tls(args):
    out = pathlib.Path(args.out)
    (out / "tls").mkdir(parents=True, exist_ok=True)
    testssl = shutil.which("testssl") or shutil.which("testssl.sh")
    if not testssl:
        scans = [{"target": t, "error": "testssl.sh is not installed on the controller (scripts/bootstrap.sh)"}
                 for t in args.target]
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            scans = list(pool.map(lambda t: scan_one(t, out, args.ca_file, testssl), args.target))
    (out / "tls" / "scans.json").write_text(json.dumps(scans, indent=1, sort_keys=True) + "\n")
    for scan in scans:
        print(f"{scan.get('host')} {scan.get('name')}:{scan.get('port')} {scan.get('seconds', 0)} s "
              f"{scan.get('error') or 'ok'}")


def parse_testssl(scan, out, min_days):
    """The parts of a testssl.sh JSON an auditor reads, plus findings."""
    result = {k: scan.get(k) for k in ("host", "name", "address", "port", "kind", "error")}
    result.update({"protocols": {}, "ciphers": [], "certificate": {}, "hsts": None, "issues": []})
    if scan.get("error"):
        return result
    items = json.loads((out / "tls" / scan["raw"]).read_text())
    for item in items:
        ident, finding, severity = item.get("id", ""), item.get("finding", ""), item.get("severity", "")
        if ident in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"):
            result["protocols"][ident] = finding
        elif ident.startswith("cipher-") or ident.startswith("cipher_x"):
            result["ciphers"].append(" ".join(finding.split()))
        elif ident.startswith("cert_") and not re.search(r"<cert#[2-9]>", ident):
            key = re.sub(r" <cert#1>$", "", ident)[len("cert_"):]
            if key not in ("", "Certificate"):
                result["certificate"][key] = finding
        elif ident.startswith("intermediate_cert_"):
            result["certificate"].setdefault("intermediates", []).append(f"{ident}: {finding}")
        elif ident in ("HSTS", "HSTS_time"):
            result["hsts"] = finding if ident == "HSTS" else f"max-age {finding}"
        if severity in TLS_FAIL_SEVERITIES | TLS_WARN_SEVERITIES or ident == "scanProblem":
            result["issues"].append({"id": ident, "severity": severity, "finding": finding})
    result["ciphers"] = sorted(set(result["ciphers"]))
    not_after = result["certificate"].get("notAfter", "")
    try:
        expires = datetime.datetime.strptime(not_after, "%Y-%m-%d %H:%M").replace(tzinfo=datetime.timezone.utc)
        result["certificate"]["days_left"] = (expires - datetime.datetime.now(datetime.timezone.utc)).days
    except ValueError:
        result["certificate"]["days_left"] = None
    result["min_days"] = min_days
    return result


def tls_findings(tls):
    findings = []
    for t in tls:
        where = f"{t['name']}:{t['port']}"
        if t.get("error"):
            findings.append(finding(t["host"], "tls", f"TLS-scan@{where}", "fail", t["error"][-300:]))
            continue
        for issue in t["issues"]:
            status = "fail" if issue["severity"] in TLS_FAIL_SEVERITIES or issue["id"] == "scanProblem" else "warn"
            findings.append(finding(t["host"], "tls", f"TLS-{issue['id']}@{where}", status,
                                    f"{issue['severity']}: {issue['finding']}"))
        days = t["certificate"].get("days_left")
        if days is None or days < t["min_days"]:
            findings.append(finding(t["host"], "tls", f"TLS-expiry@{where}", "fail",
                                    f"certificate valid {days} more day(s) (minimum {t['min_days']})"))
        if t["kind"] == "https" and not (t["hsts"] or "").startswith("max-age"):
            findings.append(finding(t["host"], "tls", f"TLS-HSTS@{where}", "fail", f"HSTS: {t['hsts']}"))
    return findings


# --- host evidence -------------------------------------------------------------

def finding(host, area, ident, status, detail):
    return {"host": host, "area": area, "id": ident, "status": status, "detail": detail}


def apply_waivers(findings, waivers):
    """audit_waivers: [{id, reason}]; an id waives that finding, or every endpoint's
    finding of that kind when it names the part before "@" (TLS-cert_revocation)."""
    for item in findings:
        for waiver in waivers:
            if item["status"] == "fail" and waiver.get("id") in (item["id"], item["id"].split("@")[0]):
                item["status"] = "waived"
                item["detail"] += f"; waived: {waiver.get('reason', '(no reason given)')}"
    return findings


def probe(evidence, key):
    return (evidence.get("probes") or {}).get(key) or {"rc": None, "stdout": "", "stderr": "not run"}


def parse_socket(line):
    fields = line.split()
    if len(fields) < 6:
        return None
    local = fields[4]
    address, _, port = local.rpartition(":")
    address = address.strip("[]").split("%")[0]
    processes = sorted(set(re.findall(r'\("([^"]+)"', " ".join(fields[6:]))))
    return {"protocol": fields[0], "address": address, "port": int(port) if port.isdigit() else port,
            "processes": processes}


def is_loopback(address):
    if address in ("*", "0.0.0.0", "::"):
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def port_in(port, ports):
    for item in ports:
        text = str(item)
        if "-" in text:
            low, high = (int(x) for x in text.split("-", 1))
            if low <= port <= high:
                return True
        elif text.isdigit() and int(text) == port:
            return True
    return False


def declared_by(socket, services, groups):
    for service in services:
        if socket["protocol"] == service.get("protocol") and set(service.get("groups", [])) & set(groups) \
                and isinstance(socket["port"], int) and port_in(socket["port"], service.get("ports", [])):
            return service.get("name")
    return None


def parse_lynis(text):
    if text is None:
        return {"status": "skipped (audit_lynis=false)"}
    if text.strip() == "lynis-not-installed":
        return {"status": "not installed on the host (the hardening role installs it)"}
    data = {"status": "ran", "hardening_index": None, "warnings": [], "suggestions": [], "version": None,
            "tests_performed": None}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "hardening_index":
            data["hardening_index"] = int(value) if value.isdigit() else value
        elif key == "lynis_version":
            data["version"] = value
        elif key == "lynis_tests_done":
            data["tests_performed"] = int(value) if value.isdigit() else value
        elif key in ("warning[]", "suggestion[]"):
            parts = value.split("|")
            entry = {"id": parts[0], "text": parts[1] if len(parts) > 1 else "",
                     "detail": parts[2] if len(parts) > 2 and parts[2] != "-" else ""}
            data["warnings" if key == "warning[]" else "suggestions"].append(entry)
    if data["hardening_index"] is None:
        data["status"] = "ran, but its report has no hardening_index"
    data["warnings"].sort(key=lambda e: (e["id"], e["text"]))
    data["suggestions"].sort(key=lambda e: (e["id"], e["text"], e["detail"]))
    return data


def parse_host(name, evidence):
    groups = evidence.get("groups", [])
    findings = []
    host = {"groups": groups, "address": evidence.get("address"), "os": evidence.get("os"),
            "kernel": evidence.get("kernel"), "virtualization": evidence.get("virtualization")}

    # Baseline controls (roles/hardening, tasks_from: audit).
    baseline = evidence.get("baseline") or {}
    controls = sorted(baseline.get("results") or [], key=lambda c: c.get("id", ""))
    host["baseline"] = {"deployed": bool(baseline.get("available")), "controls": controls}
    if not baseline.get("available"):
        findings.append(finding(name, "baseline", "BASELINE", "fail",
                                "baseline role not deployed: roles/hardening has no tasks/audit.yml, controls not evaluated"))
    for control in controls:
        if control.get("status") == "fail":
            findings.append(finding(name, "baseline", control.get("id"), "fail",
                                    f"{control.get('title', '')}: {control.get('detail', '')}"))

    # systemd-analyze security: every service unit, the project's in detail.
    units_probe = probe(evidence, "units")
    try:
        units = json.loads(units_probe["stdout"] or "[]")
    except json.JSONDecodeError:
        units = []
    host["units"] = sorted(({"unit": u["unit"], "exposure": float(u["exposure"]), "predicate": u["predicate"],
                             "project": is_project_unit(u["unit"])} for u in units), key=lambda u: u["unit"])
    if not units:
        findings.append(finding(name, "units", "UNITS", "fail",
                                f"systemd-analyze security gave nothing: {units_probe['stderr'][:300]}"))
    details = {}
    for unit, text in (evidence.get("unit_details") or {}).items():
        try:
            checks = json.loads(text or "[]")
        except json.JSONDecodeError:
            checks = []
        details[unit] = sorted(({"name": c.get("name"), "description": c.get("description"),
                                 "exposure": c.get("exposure")} for c in checks
                                if c.get("exposure") not in (None, "", "0.0", 0)), key=lambda c: str(c["name"]))
    host["unit_details"] = details
    scored = {u["unit"]: u for u in host["units"]}
    # A homeserver host other than the first may run workers only: then no main process there.
    has_workers = any(u.startswith("matrix-synapse-worker@") for u in scored)
    expected = {u: g for u, g in PROJECT_UNITS.items() if not (u == "matrix-synapse.service" and has_workers)}
    for unit in sorted(set(expected) | {u for u in scored if is_project_unit(u)}):
        if unit in scored:
            if scored[unit]["exposure"] > UNIT_EXPOSURE_MAX:
                findings.append(finding(name, "units", f"UNIT-{unit}", "fail",
                                        f"exposure {scored[unit]['exposure']} {scored[unit]['predicate']} "
                                        f"(target <= {UNIT_EXPOSURE_MAX})"))
        elif unit in expected and expected[unit] in groups:
            findings.append(finding(name, "units", f"UNIT-{unit}", "fail", f"not loaded on a {expected[unit]} host"))

    # Listening sockets against the service map.
    services = evidence.get("services")
    service_list = (services or []) + (evidence.get("services_extra") or [])
    sockets = []
    for line in probe(evidence, "sockets")["stdout"].splitlines():
        socket = parse_socket(line)
        if not socket:
            continue
        socket["loopback"] = is_loopback(socket["address"])
        socket["declared_by"] = None if socket["loopback"] else declared_by(socket, service_list, groups)
        sockets.append(socket)
    sockets.sort(key=lambda s: (s["protocol"], str(s["port"]), s["address"]))
    host["sockets"] = sockets
    host["service_map"] = "matrix_services" if services is not None else None
    exposed = [s for s in sockets if not s["loopback"]]
    if services is None:
        findings.append(finding(name, "sockets", "SERVICE-MAP", "warn",
                                "matrix_services is not defined: listening sockets not compared with a service map"))
    else:
        reported = set()
        for s in exposed:
            if not s["declared_by"] and (s["protocol"], s["address"], s["port"]) not in reported:
                reported.add((s["protocol"], s["address"], s["port"]))
                findings.append(finding(name, "sockets", f"SOCKET-{s['protocol']}-{s['port']}-{s['address']}", "fail",
                                        f"{s['address']}:{s['port']} ({', '.join(s['processes']) or '?'}) "
                                        "listens beyond loopback but no service of the map declares it"))
    host["nftables_fact"] = evidence.get("nftables_fact")

    # nftables ruleset (counters stripped: they change on every run).
    nft = probe(evidence, "nftables")
    ruleset = re.sub(r"counter packets \d+ bytes \d+", "counter", nft["stdout"])
    host["nftables"] = {"rc": nft["rc"], "ruleset": ruleset, "error": "" if nft["rc"] == 0 else nft["stderr"][:500]}
    input_drop = re.search(r"type filter hook input priority [^;]+; policy drop;", ruleset)
    if not input_drop:
        findings.append(finding(name, "nftables", "NFT-INPUT", "fail",
                                "no input chain with policy drop in the ruleset"
                                + (f" ({host['nftables']['error'].strip()})" if host["nftables"]["error"] else "")))

    # Pending updates (from the lists the host already has: no apt update).
    upgrades = []
    for line in probe(evidence, "upgrades")["stdout"].splitlines():
        match = re.match(r"Inst (\S+) (?:\[(\S+)\] )?\((\S+) (.*)\)", line)
        if match:
            upgrades.append({"package": match[1], "installed": match[2] or "", "candidate": match[3],
                             "origin": match[4], "security": "security" in match[4].lower()})
    lists = sorted(probe(evidence, "apt_lists")["stdout"].split("\n"))
    host["updates"] = {"pending": sorted(upgrades, key=lambda u: u["package"]),
                       "security": sorted(u["package"] for u in upgrades if u["security"]),
                       "lists": [line for line in lists if line]}
    if host["updates"]["security"]:
        findings.append(finding(name, "updates", "SECURITY-UPDATES", "warn",
                                f"{len(host['updates']['security'])} pending: {', '.join(host['updates']['security'])}"))

    # Versions.
    versions = {}
    for line in probe(evidence, "packages")["stdout"].splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2].startswith("ii"):
            versions[parts[0]] = parts[1]
    for key, package in (("synapse_version", "matrix-synapse"), ("element_version", "element-web")):
        result = probe(evidence, key)
        if result["rc"] == 0:
            versions[package] = result["stdout"].strip()
    host["versions"] = dict(sorted(versions.items()))

    # Lynis.
    host["lynis"] = parse_lynis(evidence.get("lynis"))

    # Synapse settings in force.
    config = evidence.get("synapse_config")
    host["synapse"] = None
    if "matrix_homeserver" in groups:
        if not config:
            findings.append(finding(name, "synapse", "SYNAPSE-CONFIG", "fail", "homeserver.yaml could not be read"))
        else:
            present = set(config.pop("keys_present", []))
            settings = {}
            for key, value in sorted(config.items()):
                settings[key] = {"value": value, "set": key in present or key in ("listeners", "database", "password_config")}
            for key, expected in SYNAPSE_EXPECTED.items():
                settings.setdefault(key, {"value": None, "set": False})
                settings[key]["expected"] = expected
                if settings[key]["value"] != expected:
                    findings.append(finding(name, "synapse", f"SYNAPSE-{key}", "warn",
                                            f"{key} is {settings[key]['value']!r} (hardened value {expected!r})"))
            for listener in config.get("listeners", []):
                binds = listener.get("bind_addresses", [])
                if listener.get("x_forwarded") and not all(is_loopback(b) for b in binds):
                    findings.append(finding(name, "synapse", f"SYNAPSE-x_forwarded-{listener.get('port')}", "warn",
                                            f"port {listener.get('port')} trusts X-Forwarded-For from anyone reaching "
                                            f"{', '.join(binds)} (restrict it with the firewall)"))
            database = config.get("database", {})
            if not is_loopback(str(database.get("host", "127.0.0.1"))) and database.get("sslmode") != "verify-full":
                findings.append(finding(name, "synapse", "SYNAPSE-database-sslmode", "warn",
                                        f"remote database with sslmode {database.get('sslmode')}"))
            host["synapse"] = settings

    host["findings"] = sorted(findings, key=lambda f: (f["area"], str(f["id"])))
    return host


def summary_of(name, host):
    controls = host["baseline"]["controls"]
    count = {s: sum(1 for c in controls if c.get("status") == s) for s in ("pass", "fail", "waived", "not_applicable")}
    project = [u for u in host["units"] if u["project"]]
    return {
        "host": name,
        "groups": host["groups"],
        "controls": count if host["baseline"]["deployed"] else None,
        "lynis_index": host["lynis"].get("hardening_index"),
        "lynis_warnings": len(host["lynis"].get("warnings", [])),
        "project_units": {u["unit"]: u["exposure"] for u in project},
        "units_scored": len(host["units"]),
        "sockets_exposed": sum(1 for s in host["sockets"] if not s["loopback"]),
        "sockets_undeclared": sum(1 for f in host["findings"] if f["area"] == "sockets" and f["status"] != "warn"),
        "security_updates": len(host["updates"]["security"]),
        "failures": sum(1 for f in host["findings"] if f["status"] == "fail"),
        "warnings": sum(1 for f in host["findings"] if f["status"] == "warn"),
    }


# --- diff ----------------------------------------------------------------------

IDENTITY = ("host", "id", "unit", "package", "name", "protocol", "address", "port", "text")


def list_key(item):
    """A name for a list item that survives reordering (so that diffs name what changed)."""
    parts = [str(item[k]) for k in IDENTITY if k in item and not isinstance(item[k], (dict, list))]
    return "|".join(parts) if parts else json.dumps(item, sort_keys=True)


def keyed(items):
    """A list of dicts as {identity: item}; repeated identities get #2, #3..."""
    out, seen = {}, {}
    for item in items:
        key = list_key(item)
        seen[key] = seen.get(key, 0) + 1
        out[key if seen[key] == 1 else f"{key}#{seen[key]}"] = item
    return out


def compare(old, new, path, lines):
    """One line per change: a whole item added or removed, or a value changed."""
    def show(value):
        return json.dumps(value, sort_keys=True)

    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if path == "" and key in VOLATILE:
                continue
            if key not in old:
                lines.append(f"+ {path}/{key}: {show(new[key])}")
            elif key not in new:
                lines.append(f"- {path}/{key}: {show(old[key])}")
            else:
                compare(old[key], new[key], f"{path}/{key}", lines)
    elif (isinstance(old, list) and isinstance(new, list) and (old or new)
          and all(isinstance(i, dict) for i in old + new)):
        compare(keyed(old), keyed(new), path + "[]", lines)
    elif isinstance(old, str) and isinstance(new, str) and "\n" in old + new:
        for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
            if line[:1] in "+-" and not line.startswith(("+++", "---")):
                lines.append(f"{line[0]} {path}: {line[1:]}")
    elif old != new:
        lines.append(f"~ {path}: {show(old)} -> {show(new)}")


def load_report(path):
    path = pathlib.Path(path)
    return json.loads((path / "report.json" if path.is_dir() else path).read_text())


def diff_reports(old, new):
    lines = []
    compare(old, new, "", lines)
    return lines


def cmd_diff(args):
    lines = diff_reports(load_report(args.old), load_report(args.new))
    print("\n".join(lines) if lines else "no change")
    return 1 if lines else 0


# --- HTML ----------------------------------------------------------------------

CSS = """
body{font:14px/1.4 sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #bbb;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#eee}.fail{background:#f8d0d0}.warn{background:#fbefc4}.pass{background:#d6efd6}
.waived{background:#dde4f6}.not_applicable{background:#eee}pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:30em}
details{margin:.4em 0}summary{cursor:pointer;font-weight:bold}code{font-size:.95em}
"""


def esc(value):
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True)
    return html.escape("" if value is None else str(value))


def table(headers, rows, classes=None, ident=None):
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for number, row in enumerate(rows):
        css = f' class="{esc(classes[number])}"' if classes and classes[number] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    id_attr = f' id="{esc(ident)}"' if ident else ""
    return f"<table{id_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report):
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Matrix stack audit "
             f"{esc(report['generated'])}</title><style>{CSS}</style></head><body>",
             f"<h1>Matrix stack audit — {esc(report['generated'])}</h1>",
             f"<p>Runtime {esc(report['runtime_seconds'])} s. Failures: {esc(report['totals']['fail'])}, "
             f"warnings: {esc(report['totals']['warn'])}, waived: {esc(report['totals']['waived'])}.</p>", "<h2>Summary per host</h2>"]
    rows, classes = [], []
    for s in report["summary"]:
        c = s["controls"]
        rows.append([s["host"], " ".join(s["groups"]),
                     "role not deployed" if c is None else f"{c['pass']} pass / {c['fail']} fail / {c['waived']} waived / {c['not_applicable']} n/a",
                     s["lynis_index"] if s["lynis_index"] is not None else "—",
                     ", ".join(f"{u.split('.')[0]} {e}" for u, e in sorted(s["project_units"].items())) or "—",
                     f"{s['sockets_exposed']} exposed, {s['sockets_undeclared']} undeclared",
                     s["security_updates"], s["failures"], s["warnings"]])
        classes.append("fail" if s["failures"] else ("warn" if s["warnings"] else "pass"))
    parts.append(table(["host", "groups", "baseline controls", "Lynis index", "project units (exposure)",
                        "listening sockets", "security updates", "failures", "warnings"], rows, classes, "summary"))
    if report["tls"]:
        parts.append("<h2>TLS endpoints (testssl.sh from the controller)</h2>")
        rows, classes = [], []
        for t in report["tls"]:
            offered = [p for p, f in sorted(t["protocols"].items()) if f.startswith("offered")]
            cert = t["certificate"]
            rows.append([t["host"], f"{t['name']}:{t['port']}", t["address"], " ".join(offered) or t.get("error") or "—",
                         len(t["ciphers"]), cert.get("chain_of_trust", ""), cert.get("notAfter", ""), cert.get("days_left"),
                         t["hsts"] if t["kind"] == "https" else "(not HTTP)", len(t["issues"])])
            classes.append("fail" if t.get("error") or any(i["severity"] in TLS_FAIL_SEVERITIES for i in t["issues"]) else "")
        parts.append(table(["host", "endpoint", "address", "protocols offered", "ciphers", "chain of trust",
                            "not after", "days left", "HSTS", "issues"], rows, classes, "tls"))
    waived = [[name, c.get("id"), c.get("detail")] for name, host in sorted(report["hosts"].items())
              for c in host["baseline"]["controls"] if c.get("status") == "waived"]
    waived += [[f["host"], f["id"], f["detail"]] for f in report["findings"] if f["status"] == "waived"]
    parts.append("<h2>Waivers in force</h2>")
    parts.append(table(["host", "control or finding", "detail and reason"], waived, ["waived"] * len(waived), "waivers")
                 if waived else "<p>None.</p>")
    parts.append("<h2>Findings</h2>")
    findings = report["findings"]
    parts.append(table(["status", "host", "area", "id", "detail"],
                       [[f["status"], f["host"], f["area"], f["id"], f["detail"]] for f in findings],
                       [f["status"] for f in findings], "findings") if findings else "<p>None.</p>")
    for name, host in sorted(report["hosts"].items()):
        parts.append(f"<h2 id=\"host-{esc(name)}\">{esc(name)}</h2><p>{esc(host['os'])}, kernel {esc(host['kernel'])}, "
                     f"virtualization {esc(host['virtualization'])}, address {esc(host['address'])}, "
                     f"groups {esc(' '.join(host['groups']))}</p>")
        controls = host["baseline"]["controls"]
        parts.append(f"<details open><summary>Baseline controls ({len(controls)})</summary>")
        parts.append(table(["id", "status", "title", "reference", "detail"],
                           [[c.get("id"), c.get("status"), c.get("title"), c.get("reference"), c.get("detail")] for c in controls],
                           [c.get("status") for c in controls]) if controls
                     else "<p>Baseline role not deployed: no control evaluated.</p>")
        parts.append("</details>")
        lynis = host["lynis"]
        parts.append(f"<details><summary>Lynis: {esc(lynis.get('status'))}, hardening index "
                     f"{esc(lynis.get('hardening_index'))}, {len(lynis.get('warnings', []))} warning(s), "
                     f"{len(lynis.get('suggestions', []))} suggestion(s)</summary>")
        for kind in ("warnings", "suggestions"):
            if lynis.get(kind):
                parts.append(table(["test", kind[:-1], "detail"], [[e["id"], e["text"], e["detail"]] for e in lynis[kind]]))
        parts.append("</details>")
        units = host["units"]
        parts.append(f"<details><summary>systemd-analyze security ({len(units)} units)</summary>")
        parts.append(table(["unit", "exposure", "predicate", "project"],
                           [[u["unit"], u["exposure"], u["predicate"], "yes" if u["project"] else ""] for u in units],
                           ["fail" if u["project"] and u["exposure"] > UNIT_EXPOSURE_MAX else
                            ("pass" if u["project"] else "") for u in units]))
        for unit, checks in sorted(host["unit_details"].items()):
            parts.append(f"<details><summary>{esc(unit)}: settings that add exposure</summary>")
            parts.append(table(["setting", "description", "exposure"], [[c["name"], c["description"], c["exposure"]] for c in checks]))
            parts.append("</details>")
        parts.append("</details>")
        sockets = host["sockets"]
        parts.append(f"<details open><summary>Listening sockets ({len(sockets)}; service map: "
                     f"{esc(host['service_map'] or 'not defined')})</summary>")
        parts.append(table(["protocol", "address", "port", "processes", "declared by"],
                           [[s["protocol"], s["address"], s["port"], " ".join(s["processes"]),
                             "loopback" if s["loopback"] else (s["declared_by"] or "UNDECLARED")] for s in sockets],
                           ["" if s["loopback"] else ("pass" if s["declared_by"] else
                                                      ("fail" if host["service_map"] else "warn")) for s in sockets]))
        parts.append("</details>")
        parts.append("<details><summary>nftables: ruleset and enforced rules (local fact)</summary>"
                     f"<pre>{esc(host['nftables']['ruleset'] or host['nftables']['error'])}</pre>"
                     f"<pre>{esc(json.dumps(host['nftables_fact'], indent=1, sort_keys=True))}</pre></details>")
        updates = host["updates"]
        parts.append(f"<details><summary>Pending updates: {len(updates['pending'])}, security {len(updates['security'])}"
                     "</summary><p>From the package lists already on the host (no apt update): "
                     f"{esc(', '.join(updates['lists']) or 'none')}</p>")
        parts.append(table(["package", "installed", "candidate", "origin"],
                           [[u["package"], u["installed"], u["candidate"], u["origin"]] for u in updates["pending"]],
                           ["warn" if u["security"] else "" for u in updates["pending"]]))
        parts.append("</details>")
        parts.append("<details open><summary>Versions</summary>")
        parts.append(table(["component", "version"], sorted(host["versions"].items())))
        parts.append("</details>")
        if host["synapse"]:
            parts.append("<details open><summary>Synapse settings in force (homeserver.yaml)</summary>")
            settings = host["synapse"]
            parts.append(table(["setting", "value", "source", "hardened value"],
                               [[k, v["value"], "homeserver.yaml" if v["set"] else "Synapse default",
                                 v.get("expected", "")] for k, v in sorted(settings.items())],
                               ["" if "expected" not in v else ("pass" if v["value"] == v["expected"] else "warn")
                                for _, v in sorted(settings.items())]))
            parts.append("</details>")
    for t in report["tls"]:
        parts.append(f"<details><summary>TLS {esc(t['host'])} {esc(t['name'])}:{esc(t['port'])}</summary>")
        parts.append(table(["protocol", "finding"], sorted(t["protocols"].items())))
        parts.append(table(["cipher (per protocol)"], [[c] for c in t["ciphers"]]))
        parts.append(table(["certificate", "value"], sorted((k, v) for k, v in t["certificate"].items())))
        if t["issues"]:
            parts.append(table(["id", "severity", "finding"], [[i["id"], i["severity"], i["finding"]] for i in t["issues"]]))
        parts.append("</details>")
    if report.get("changes"):
        parts.append(f"<h2>Changes since {esc(report.get('previous_report'))}</h2><pre>{esc(chr(10).join(report['changes']))}</pre>")
    parts.append("</body></html>\n")
    return "".join(parts)


def cmd_render(args):
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    evidence = json.loads(pathlib.Path(args.evidence).read_text()) if args.evidence else json.load(sys.stdin)
    # The raw evidence as collected (command outputs), kept for the auditor and
    # to render again: render --out DIR --evidence DIR/evidence.json
    (out / "evidence.json").write_text(json.dumps(evidence, indent=1, sort_keys=True) + "\n")
    hosts = {name: parse_host(name, data) for name, data in sorted(evidence["hosts"].items())}
    tls = []
    scans_file = out / "tls" / "scans.json"
    if scans_file.is_file():
        tls = [parse_testssl(scan, out, args.tls_min_days) for scan in json.loads(scans_file.read_text())]
        tls.sort(key=lambda t: (t["host"] or "", t["name"] or "", t["port"] or 0))
    waivers = evidence.get("waivers") or []
    for item in tls_findings(tls):
        hosts[item["host"]]["findings"].append(item)
    for host in hosts.values():
        apply_waivers(host["findings"], waivers)
        host["findings"].sort(key=lambda f: (f["area"], str(f["id"])))
    findings = [f for h in hosts.values() for f in h["findings"]]
    findings.sort(key=lambda f: ({"fail": 0, "warn": 1, "waived": 2}.get(f["status"], 2), f["host"] or "", f["area"], str(f["id"])))
    summary = [summary_of(name, host) for name, host in hosts.items()]
    for host in hosts.values():
        del host["findings"]  # once, in the report's findings
    report = {
        "schema": SCHEMA,
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "runtime_seconds": round(time.time() - args.started, 1) if args.started else None,
        "report_dir": str(out.resolve()),
        "hosts": hosts,
        "tls": tls,
        "summary": summary,
        "findings": findings,
        "waivers": sorted(waivers, key=lambda w: str(w.get("id"))),
        "totals": {status: sum(f["status"] == status for f in findings) for status in ("fail", "warn", "waived")},
    }
    previous = sorted(p for p in out.parent.glob("audit-*/report.json") if p.parent.name < out.name)
    report["previous_report"] = previous[-1].parent.name if previous else None
    report["changes"] = diff_reports(load_report(previous[-1]), report) if previous else []
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    (out / "index.html").write_text(render_html(report))
    print(f"Report: {out.resolve()}/index.html")
    print(f"Audit runtime: {report['runtime_seconds']} s")
    for s in report["summary"]:
        print(f"{s['host']}: controls {s['controls'] or 'role not deployed'}, Lynis {s['lynis_index']}, "
              f"units {s['project_units']}, sockets exposed {s['sockets_exposed']} "
              f"(undeclared {s['sockets_undeclared']}), security updates {s['security_updates']}, "
              f"failures {s['failures']}, warnings {s['warnings']}")
    for t in tls:
        print(f"TLS {t['host']} {t['name']}:{t['port']}: protocols "
              f"{' '.join(p for p, f in sorted(t['protocols'].items()) if f.startswith('offered')) or t.get('error')}, "
              f"days left {t['certificate'].get('days_left')}, HSTS {t['hsts']}, issues {len(t['issues'])}")
    for f in findings:
        print(f"{f['status'].upper()} {f['host']} {f['id']}: {f['detail']}")
    if previous:
        print(f"Changes since {report['previous_report']}: {len(report['changes'])}")
        for line in report["changes"][:200]:
            print(line)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tls = sub.add_parser("tls", help="scan TLS endpoints with testssl.sh")
    tls.add_argument("--out", required=True)
    tls.add_argument("--target", action="append", default=[], help="HOST,NAME,ADDRESS,PORT,https|tls")
    tls.add_argument("--ca-file", default="", help="extra CA to trust (staging CA)")
    render = sub.add_parser("render", help="write report.json and index.html from the evidence on stdin")
    render.add_argument("--out", required=True)
    render.add_argument("--started", type=float, default=None)
    render.add_argument("--tls-min-days", type=int, default=14)
    render.add_argument("--evidence", help="read the evidence from this file instead of stdin")
    diff = sub.add_parser("diff", help="what changed between two reports")
    diff.add_argument("old")
    diff.add_argument("new")
    args = parser.parse_args()
    return {"tls": cmd_tls, "render": cmd_render, "diff": cmd_diff}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
