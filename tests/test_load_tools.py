"""The load benchmark's own logic (tests/load): which process a command line is, percentiles,
and the summary's ratios and costs on known figures. The benchmark itself runs from
scripts/bench-load.sh, not in the test command."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "load"))
import matrix_load  # noqa: E402


@pytest.mark.parametrize(("args", "expected"), [
    ("/opt/synapse/current/bin/python -m synapse.app.homeserver --config-path=/etc/matrix-synapse/homeserver.yaml",
     "synapse:main"),
    ("/opt/synapse/current/bin/python -m synapse.app.generic_worker --config-path=/etc/matrix-synapse/homeserver.yaml "
     "--config-path=/etc/matrix-synapse/workers/sync1.yaml", "synapse:sync1"),
    ("/opt/stock-synapse/bin/python -m synapse.app.homeserver -c /etc/stock-synapse/homeserver.yaml", "synapse:main"),
    ("postgres: 15/main: synapse synapse [local] idle", "postgresql"),
    ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", "postgresql"),
    ("nginx: worker process", "nginx"),
    ("/usr/bin/redis-server 10.0.0.2:6379", "redis"),
    ("/usr/bin/turnserver -c /etc/turnserver.conf", "coturn"),
    ("/lib/systemd/systemd-journald", None),
])
def test_server_processes_are_named_by_their_command_line(args, expected):
    assert matrix_load.process_class(args) == expected


def test_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert matrix_load.percentile(values, 50) in (50.0, 51.0)
    assert matrix_load.percentile(values, 95) in (95.0, 96.0)
    assert matrix_load.percentile([], 95) is None


def _run(label, users, delivered_per_s, p95, cores, rss):
    processes = {"synapse:main": {"cpu_s": cores * 60, "pss_mib": rss}, "postgresql": {"cpu_s": 1.0, "pss_mib": 50.0}}
    return {"label": label, "users": users, "room_size": 10, "rate_per_user": 0.05, "duration_s": 60,
            "sent": users * 3, "delivered": users * 27, "sent_per_s": users * 0.05, "delivered_per_s": delivered_per_s,
            "error_rate": 0.0, "latency_ms": {"50": p95 // 2, "95": p95, "99": p95 * 2}, "generator_cpu_s": 5.0,
            "idle": {"seconds": 20, "cpu_total_s": 2.0, "cores": 0.1, "processes": processes},
            "load": {"seconds": 60, "cpu_total_s": cores * 60, "cores": cores, "processes": processes}}


def test_the_summary_prints_the_ratios_the_issue_asks_for(tmp_path):
    runs = [_run("stock", 50, 20.0, 100, 0.5, 200.0), _run("monolith", 50, 20.0, 110, 0.6, 210.0),
            _run("workers", 50, 20.0, 120, 0.8, 700.0), _run("stock", 100, 40.0, 200, 1.0, 300.0),
            _run("monolith", 100, 40.0, 230, 1.1, 310.0), _run("workers", 100, 40.0, 210, 1.3, 800.0)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in runs))
    out = subprocess.run([sys.executable, str(REPO / "tests" / "load" / "summary.py"), str(results)],
                         check=True, capture_output=True, text=True).stdout
    assert "N=50   ours/stock throughput 1.00 (target >= 1.0), ours/stock p95 1.10 (target <= 1.2)" in out
    assert "N=100  ours/stock throughput 1.00 (target >= 1.0), ours/stock p95 1.15" in out
    assert "workers/monolith throughput 1.00, p95 0.91" in out
    # Memory per user: the slope of the Synapse processes' PSS, 100 MiB over 50 users.
    assert "2048 KiB Synapse memory per user" in out
    # Without the direct set-up, no split.
    assert "split:" not in out


def test_the_summary_splits_the_proxy_from_the_rest_when_the_direct_set_up_ran(tmp_path):
    runs = [_run("stock", 50, 20.0, 100, 0.5, 200.0), _run("direct", 50, 20.0, 105, 0.55, 205.0),
            _run("monolith", 50, 20.0, 126, 0.6, 210.0)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in runs))
    out = subprocess.run([sys.executable, str(REPO / "tests" / "load" / "summary.py"), str(results)],
                         check=True, capture_output=True, text=True).stdout
    assert "ours/stock p95 1.26 (target <= 1.2)" in out
    assert "split: direct/stock (host, sandbox, firewall, settings) throughput 1.00, p95 1.05; " \
           "monolith/direct (proxy and TLS) throughput 1.00, p95 1.20" in out
    assert any(line.split()[:2] == ["direct", "50"] for line in out.splitlines())
