"""nginx's unit as an auditor checks it: no process of nginx runs as root, the
master holds one capability (binding 80/443/8448), the system is read-only to
it, and `systemd-analyze security` rates it 2.0 or less. Reload, log reopening
(logrotate) and a restart still work inside the sandbox.

The scenario's container has net.ipv4.ip_unprivileged_port_start = 1024, as a
real kernel (Docker sets 0): binding 443 really needs the capability here.
"""
import pathlib
import sys

from conftest import HOMESERVER_FQDN, SERVER_NAME

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))

from unit_security import MAX_EXPOSURE, capabilities, exposure, main_pid, open_items  # noqa: E402

UNIT = "nginx.service"
CAP_NET_BIND_SERVICE = 1 << 10


def test_privileged_ports_need_the_capability_here(host):
    assert host.file("/proc/sys/net/ipv4/ip_unprivileged_port_start").content_string.strip() == "1024"


def test_nginx_exposure_is_at_most_2(host):
    level, verdict, report = exposure(host, UNIT)
    print(f"{UNIT} exposure {level} {verdict}")
    assert level <= MAX_EXPOSURE, f"{UNIT} exposure {level} {verdict}\n{open_items(report)}"


def test_no_nginx_process_runs_as_root(host):
    users = host.check_output("ps -C nginx -o user= | sort -u").split()
    assert users == ["www-data"], users


def test_master_holds_only_the_bind_capability(host):
    effective, bounding = capabilities(host, main_pid(host, UNIT))
    assert effective == CAP_NET_BIND_SERVICE
    assert bounding == CAP_NET_BIND_SERVICE


def test_system_is_read_only_to_nginx_except_its_folders(host):
    pid = main_pid(host, UNIT)
    in_ns = "nsenter --target %s --mount -- touch %s"
    denied = host.run(in_ns, pid, "/etc/nginx/sandbox-probe")
    assert denied.rc != 0 and "Read-only file system" in denied.stderr, denied.stderr
    for folder in ("/var/log/nginx", "/var/lib/nginx"):
        allowed = host.run(in_ns, pid, f"{folder}/sandbox-probe")
        assert allowed.rc == 0, allowed.stderr
        host.run("rm -f %s", f"{folder}/sandbox-probe")


def test_requests_are_logged(host, client):
    marker = "/_matrix/client/versions?sandbox-log-probe"
    client.request(HOMESERVER_FQDN, marker)
    assert marker in host.check_output("tail -n 20 /var/log/nginx/access.log")


def test_reload_and_log_reopening_work(host, client):
    master = main_pid(host, UNIT)
    assert host.run("systemctl reload %s", UNIT).rc == 0
    # What logrotate's postrotate runs (SIGUSR1 through Debian's init script).
    assert host.run("invoke-rc.d nginx rotate").rc == 0
    assert main_pid(host, UNIT) == master
    assert host.service("nginx").is_running
    assert client.request(SERVER_NAME, "/.well-known/matrix/client").status == 200
    assert client.handshake(HOMESERVER_FQDN).startswith("TLSv1.")


def test_restart_stops_and_starts_cleanly(host, client):
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    assert host.run("systemctl restart %s", UNIT).rc == 0
    journal = host.check_output("journalctl --unit %s --since %s --no-pager", UNIT, since)
    assert "failed to kill" not in journal and "FAILURE" not in journal, journal
    assert client.handshake(HOMESERVER_FQDN).startswith("TLSv1.")
