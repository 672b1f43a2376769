#!/usr/bin/env python3
"""Read-only check of the hardening controls on the live host (Python 3 standard library only).

Input (stdin): JSON {"container": bool, "virtualization": str, "sysctl_file": path,
"waivers": {id: reason}, "controls": [control, ...]} where each control comes from the role's
vars/controls.yml, rendered by Ansible. Output (stdout): JSON list of
{id, title, reference, status, detail}, status one of pass, fail, waived, not_applicable.

A control whose on-disk part holds but whose run-time part needs the host's own kernel (sysctl
values, loaded modules, audit rules, AppArmor, the clock, mounts) is "not_applicable" inside a
container, with the detection in its detail; it is never reported as passing there.
Nothing on the host is changed: only files are read and query commands run.
"""
import glob
import json
import os
import re
import shutil
import stat
import subprocess
import sys


def run(argv, timeout=60):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        return proc.returncode, proc.stdout, proc.stderr
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{argv[0]}: timed out"


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def norm(value):
    return str(value).strip().lower()


class Result:
    def __init__(self):
        self.problems = []   # a requirement that does not hold: fail
        self.skipped = []    # a run-time part this host cannot have (container): not applicable
        self.notes = []      # what was verified


class Checker:
    def __init__(self, spec):
        self.spec = spec
        self.container = bool(spec["container"])
        self.virtualization = spec.get("virtualization", "unknown")
        self._sshd = None
        self._apt = None

    # -- helpers ------------------------------------------------------------------------------
    def container_reason(self, what):
        return (f"{what}: not applicable here, the host is a container ({self.virtualization}) "
                "sharing the kernel of the machine that runs it")

    def sshd_effective(self):
        if self._sshd is None:
            code, out, err = run(["/usr/sbin/sshd", "-T"])
            settings = {}
            if code == 0:
                for line in out.splitlines():
                    key, _, value = line.partition(" ")
                    settings.setdefault(key.lower(), []).append(value.strip())
            self._sshd = (code, settings, err.strip())
        return self._sshd

    def package_installed(self, name):
        code, out, _ = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", name])
        return code == 0 and out.startswith("ii")

    # -- check kinds --------------------------------------------------------------------------
    def check_sysctl(self, expected, res):
        text = read(self.spec["sysctl_file"]) or ""
        written = {}
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith(("#", ";")) and "=" in line:
                key, _, value = line.partition("=")
                written[key.strip()] = value.strip()
        for key, value in expected.items():
            if written.get(key) != str(value):
                res.problems.append(f"{self.spec['sysctl_file']}: {key} = {written.get(key, '(missing)')}, expected {value}")
        if self.container:
            res.skipped.append(self.container_reason("kernel value in force (/proc/sys is read-only)"))
            res.notes.append(f"{', '.join(f'{k} = {v}' for k, v in expected.items())} written to {self.spec['sysctl_file']}")
            return
        for key, value in expected.items():
            current = read("/proc/sys/" + key.replace(".", "/"))
            if current is None:
                res.problems.append(f"{key}: not available in this kernel")
            elif " ".join(current.split()) != str(value):
                res.problems.append(f"{key} is {current.strip()} in the running kernel, expected {value}")
            else:
                res.notes.append(f"{key} = {value}")

    def check_modules(self, modules, res):
        text = read("/etc/modprobe.d/60-hardening.conf") or ""
        for module in modules:
            if not re.search(rf"^install {re.escape(module)} /bin/false$", text, re.M):
                res.problems.append(f"/etc/modprobe.d/60-hardening.conf: no 'install {module} /bin/false'")
            if not re.search(rf"^blacklist {re.escape(module)}$", text, re.M):
                res.problems.append(f"/etc/modprobe.d/60-hardening.conf: no 'blacklist {module}'")
        if self.container:
            res.skipped.append(self.container_reason("loaded modules"))
            res.notes.append(f"{', '.join(modules)} blocked in /etc/modprobe.d/60-hardening.conf")
            return
        loaded = {line.split()[0] for line in (read("/proc/modules") or "").splitlines() if line}
        for module in modules:
            if module.replace("-", "_") in loaded:
                res.problems.append(f"module {module} is loaded")
        res.notes.append(f"{', '.join(modules)} blocked and not loaded")

    def check_files(self, files, res):
        for item in files:
            path = item["path"]
            try:
                info = os.stat(path)
            except OSError:
                res.problems.append(f"{path}: missing")
                continue
            if item.get("directory"):
                if not stat.S_ISDIR(info.st_mode):
                    res.problems.append(f"{path}: not a directory")
                continue
            if item.get("mode") and stat.S_IMODE(info.st_mode) & ~int(item["mode"], 8):
                res.problems.append(f"{path}: mode {stat.S_IMODE(info.st_mode):04o}, expected at most {item['mode']}")
            text = read(path) or ""
            for pattern in item.get("match", []):
                if not re.search(pattern, text, re.M):
                    res.problems.append(f"{path}: no line matching {pattern}")
        res.notes.append("files: " + ", ".join(i["path"] for i in files))

    def check_manager(self, expected, res):
        for prop, value in expected.items():
            code, out, err = run(["systemctl", "show", f"--property={prop}", "--value"])
            if code != 0 or out.strip() != str(value):
                res.problems.append(f"systemd {prop} is {out.strip() or err.strip()!r}, expected {value}")
            else:
                res.notes.append(f"systemd {prop}={value}")

    def check_packages_present(self, names, res):
        for name in names:
            if not self.package_installed(name):
                res.problems.append(f"package {name} not installed")

    def check_packages_absent(self, names, res):
        present = [name for name in names if self.package_installed(name)]
        if present:
            res.problems.append("installed: " + ", ".join(present))
        else:
            res.notes.append("none of " + ", ".join(names) + " installed")

    def check_programs_absent(self, names, res):
        found = [shutil.which(name) for name in names if shutil.which(name)]
        if found:
            res.problems.append("found on PATH: " + ", ".join(found))

    def check_commands(self, commands, res):
        for command in commands:
            code, out, err = run(command["argv"])
            if code != command.get("rc", 0):
                res.problems.append(f"{command['label']}: exit {code}: {(err or out).strip()[:300]}")
            else:
                res.notes.append(f"{command['label']}: ok")

    def check_sshd(self, expected, res):
        code, settings, err = self.sshd_effective()
        if code != 0:
            res.problems.append(f"sshd -T failed: {err[:300]}")
            return
        for key, value in expected.items():
            actual = settings.get(key.lower())
            want = set(re.split(r"[\s,]+", norm(value)))
            have = set(re.split(r"[\s,]+", norm(" ".join(actual)))) if actual else None
            if have != want:
                res.problems.append(f"sshd {key} is {' '.join(actual) if actual else '(unset)'}, expected {value}")
        if not res.problems:
            res.notes.append("sshd -T: " + ", ".join(f"{k} {v}" for k, v in expected.items()))

    def sudoers_lines(self):
        paths = ["/etc/sudoers"] + sorted(glob.glob("/etc/sudoers.d/*"))
        for path in paths:
            for number, line in enumerate((read(path) or "").splitlines(), 1):
                line = line.strip()
                if line and not line.startswith("#") or line.startswith(("#include", "#includedir")):
                    yield path, number, line

    def check_sudoers(self, settings, res):
        defaults = [line for _, _, line in self.sudoers_lines() if line.startswith("Defaults")]
        for setting in settings:
            pattern = rf"^Defaults\s+(.*[\s,])?{re.escape(setting)}(\s*,|\s*$)"
            if not any(re.search(pattern, line) for line in defaults):
                res.problems.append(f"no 'Defaults {setting}' in the sudoers files")
            else:
                res.notes.append(f"Defaults {setting}")

    def check_sudoers_forbidden(self, patterns, res):
        for path, number, line in self.sudoers_lines():
            for pattern in patterns:
                if re.search(pattern, line):
                    res.problems.append(f"{path}:{number}: {line}")
        if not res.problems:
            res.notes.append("no " + ", ".join(patterns) + " in /etc/sudoers or /etc/sudoers.d")

    def check_audit_keys(self, keys, res):
        if self.container:
            res.skipped.append(self.container_reason(
                "auditd and the loaded audit rules (the audit subsystem is not namespaced: auditd is kept "
                "stopped by ConditionVirtualization=!container so that it never changes the host's rules)"))
            res.notes.append("rules written to /etc/audit/rules.d/60-hardening.rules")
            return
        code, out, _ = run(["systemctl", "is-active", "auditd.service"])
        if out.strip() != "active":
            res.problems.append(f"auditd.service is {out.strip()}")
        code, status, _ = run(["auditctl", "-s"])
        if code == 0 and re.search(r"^enabled 0$", status, re.M):
            res.problems.append("the kernel's auditing is off (auditctl -s: enabled 0)")
        code, out, err = run(["auditctl", "-l"])
        if code != 0:
            res.problems.append(f"auditctl -l: {err.strip()[:200]}")
            return
        missing = [key for key in keys if not re.search(rf"(-k |key=){re.escape(key)}(\s|$)", out)]
        if missing:
            res.problems.append("rules not loaded for keys: " + ", ".join(missing))
        else:
            res.notes.append(f"auditd active, {len(out.splitlines())} rules loaded")

    def check_remote_syslog(self, spec, res):
        if not spec["target"]:
            if os.path.exists(spec["file"]):
                res.problems.append(f"{spec['file']} exists but no remote syslog server is set")
            res.notes.append("no remote syslog server set (hardening_remote_syslog): the journal is kept locally")
            return
        if not self.package_installed("rsyslog"):
            res.problems.append("package rsyslog not installed")
        text = read(spec["file"]) or ""
        if f'target="{spec["target"]}"' not in text:
            res.problems.append(f"{spec['file']}: no forwarding to {spec['target']}")
        code, out, _ = run(["systemctl", "is-active", "rsyslog.service"])
        if out.strip() != "active":
            res.problems.append(f"rsyslog.service is {out.strip()}")
        res.notes.append(f"forwarded to {spec['target']}")

    def check_units_active(self, units, res, host_only=False):
        if host_only and self.container:
            res.skipped.append(self.container_reason(
                ", ".join(units) + " (the clock is not namespaced; chrony.service has ConditionCapability=CAP_SYS_TIME)"))
            return
        for unit in units:
            _, out, _ = run(["systemctl", "is-active", unit])
            if out.strip() != "active":
                res.problems.append(f"{unit} is {out.strip()}")
            else:
                res.notes.append(f"{unit} active")

    def check_units_enabled(self, units, res):
        for unit in units:
            _, out, _ = run(["systemctl", "is-enabled", unit])
            if out.strip() != "enabled":
                res.problems.append(f"{unit} is {out.strip()}")

    def apt_config(self):
        if self._apt is None:
            _, out, _ = run(["apt-config", "dump"])
            values = {}
            for line in out.splitlines():
                match = re.match(r'^(\S+?)(::)? "(.*)";$', line)
                if match:
                    values.setdefault(match.group(1), []).append(match.group(3))
            self._apt = values
        return self._apt

    def check_apt_config(self, expected, res):
        values = self.apt_config()
        for key, want in expected.items():
            have = [v for v in values.get(key, []) if v != ""]
            if sorted(have) != sorted(want):
                res.problems.append(f"apt {key} is {have}, expected {want}")
            else:
                res.notes.append(f"apt {key} = {', '.join(want)}")

    def check_apt_label(self, labels, res):
        labels = [labels] if isinstance(labels, str) else labels
        for path in glob.glob("/var/lib/apt/lists/*Release"):
            for label in labels:
                if re.search(rf"^Label: {re.escape(label)}$", read(path) or "", re.M):
                    res.notes.append(f"{label} source: {os.path.basename(path)}")
                    return
        res.problems.append(f"no apt source with Label: {' or '.join(labels)} (apt-get update done?)")

    def check_apparmor(self, _, res):
        if self.container:
            res.skipped.append(self.container_reason("AppArmor (the security module is the host kernel's)"))
            return
        code, _, err = run(["aa-status", "--enabled"])
        if code != 0:
            res.problems.append(f"AppArmor not enabled (aa-status --enabled exit {code}) {err.strip()[:200]}")
            return
        code, out, _ = run(["aa-status", "--enforced"])
        if code != 0 or not out.strip().isdigit() or int(out.strip()) == 0:
            res.problems.append(f"no profile in enforce mode ({out.strip() or code})")
        else:
            res.notes.append(f"AppArmor enabled, {out.strip()} profiles enforced")
        code, out, _ = run(["aa-status", "--complaining"])
        if out.strip().isdigit() and int(out.strip()) > 0:
            res.notes.append(f"{out.strip()} profiles in complain mode")

    def mounts(self):
        found = {}
        for line in (read("/proc/self/mountinfo") or "").splitlines():
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) >= 6 and rfields:
                options = set(fields[5].split(",")) | set(rfields[2].split(",") if len(rfields) > 2 else [])
                found[fields[4]] = (rfields[0], options)
        return found

    def check_mount(self, spec, res):
        mount = self.mounts().get(spec["path"])
        if self.container:
            if mount:
                res.skipped.append(self.container_reason(
                    f"{spec['path']} is a {mount[0]} mount provided by the container runtime "
                    f"({','.join(sorted(mount[1] & {'nodev', 'nosuid', 'noexec', 'exec', 'dev', 'suid'}))}), not the host's "
                    "to remount; the role's mount applies on VMs and bare metal"))
            else:
                res.skipped.append(self.container_reason(f"{spec['path']} mount (mounts are the container runtime's)"))
            return
        if spec.get("unit") and not os.path.exists(spec["unit"]):
            res.problems.append(f"{spec['unit']} missing")
        if spec.get("fstab"):
            entries = [line.split() for line in (read("/etc/fstab") or "").splitlines()
                       if line.strip() and not line.lstrip().startswith("#")]
            entry = next((e for e in entries if len(e) >= 4 and e[1] == spec["path"]), None)
            if entry is None:
                res.problems.append(f"/etc/fstab has no entry for {spec['path']} (lost at the next boot)")
            elif [o for o in spec["options"] if o not in entry[3].split(",")]:
                res.problems.append(f"/etc/fstab mounts {spec['path']} with {entry[3]}")
        if not mount:
            res.problems.append(f"{spec['path']} is not a mount point")
            return
        fstype, options = mount
        if fstype != spec["fstype"]:
            res.problems.append(f"{spec['path']} is {fstype}, expected {spec['fstype']}")
        missing = [o for o in spec["options"] if o not in options]
        if missing:
            res.problems.append(f"{spec['path']} mounted without {', '.join(missing)}")
        else:
            res.notes.append(f"{spec['path']}: {fstype} {','.join(spec['options'])}")

    def check_banner(self, spec, res):
        text = spec["text"].strip()
        for path in spec["files"]:
            content = read(path)
            if content is None:
                res.problems.append(f"{path}: missing")
            elif content.strip() != text:
                res.problems.append(f"{path}: not the configured banner")
            elif re.search(r"\\[mrsvnlo]", content):
                res.problems.append(f"{path}: discloses system details (getty escapes)")
        if not res.problems:
            res.notes.append("banner in " + ", ".join(spec["files"]))

    # -- one control --------------------------------------------------------------------------
    KINDS = [
        "packages_present", "packages_absent", "programs_absent", "files", "commands", "sysctl",
        "modules", "manager", "sshd", "sudoers", "sudoers_forbidden", "audit_keys", "remote_syslog",
        "units_active", "units_active_host", "units_enabled", "apt_config", "apt_label", "apparmor",
        "mount", "banner",
    ]

    def evaluate(self, control):
        res = Result()
        for kind, argument in control.get("check", {}).items():
            if kind not in self.KINDS:
                res.problems.append(f"checker: unknown check kind {kind}")
            elif kind == "units_active_host":
                self.check_units_active(argument, res, host_only=True)
            else:
                getattr(self, "check_" + kind)(argument, res)
        return res

    def control(self, control):
        try:
            res = self.evaluate(control)
        except Exception as error:  # noqa: BLE001 - a checker bug is a failed control, with its cause
            res = Result()
            res.problems.append(f"checker error: {error!r}")
        entry = {"id": control["id"], "title": control["title"], "reference": control["reference"]}
        reason = self.spec["waivers"].get(control["id"])
        if reason is not None:
            state = "holds anyway" if not res.problems else "not enforced: " + "; ".join(res.problems)
            return {**entry, "status": "waived", "detail": f"waived: {reason} (on this host: {state})"}
        if res.problems:
            return {**entry, "status": "fail", "detail": "; ".join(res.problems)}
        if res.skipped:
            return {**entry, "status": "not_applicable", "detail": "; ".join(res.skipped + res.notes)}
        return {**entry, "status": "pass", "detail": "; ".join(res.notes)}


def main():
    spec = json.load(sys.stdin)
    checker = Checker(spec)
    json.dump([checker.control(control) for control in spec["controls"]], sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
