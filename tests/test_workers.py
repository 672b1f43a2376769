"""Synapse's worker layout (playbooks/filter_plugins/matrix_workers.py): presets and lists per
host, ports, duties, the proxy's pools, and the layouts preflight refuses."""
import importlib.util

import pytest

from conftest import REPO

_SPEC = importlib.util.spec_from_file_location("matrix_workers", REPO / "playbooks" / "filter_plugins" / "matrix_workers.py")
workers = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(workers)


def layout(specs, hosts=None):
    return workers.matrix_synapse_worker_layout(specs, hosts or list(specs), 8101, 9101, 9093)


def test_no_workers_is_a_single_process():
    result = layout({"hs1": "none"})
    assert result["workers"] == [] and result["errors"] == [] and result["pools"] == {}
    assert result["ports"] == {"hs1": {"http": [], "replication": []}}
    assert result["stream_writers"] == {} and result["background_tasks_on"] == ""


def test_small_on_two_hosts_numbers_workers_across_the_homeserver():
    result = layout({"hs1": "small", "hs2": "small"})
    assert result["errors"] == []
    names = [(w["host"], w["name"]) for w in result["workers"]]
    assert names == [("hs1", "writer1"), ("hs1", "background1"), ("hs1", "media1"), ("hs1", "sync1"), ("hs1", "client1"),
                     ("hs2", "sync2"), ("hs2", "client2")]
    # Each host numbers its ports from the base; only stream writers listen for replication.
    assert [w["http_port"] for w in result["workers"]] == [8101, 8102, 8103, 8104, 8105, 8101, 8102]
    assert [w["replication_port"] for w in result["workers"]] == [9101, None, None, None, None, None, None]
    assert result["ports"] == {"hs1": {"http": [8101, 8103, 8104, 8105], "replication": [9093, 9101]},
                               "hs2": {"http": [8101, 8102], "replication": []}}
    assert result["stream_writers"] == {s: ["writer1"] for s in workers.STREAMS}
    assert result["pools"]["sync"] == [["hs1", 8104], ["hs2", 8101]]
    assert result["pools"]["initial_sync"] == result["pools"]["sync"]
    assert result["pools"]["typing"] == [["hs1", 8101]]
    assert result["pools"]["media"] == [["hs1", 8103]]
    assert (result["background_tasks_on"], result["pusher_instances"], result["federation_sender_instances"]) == (
        "background1", ["background1"], ["background1"])
    media = next(w for w in result["workers"] if w["name"] == "media1")
    assert media["app"] == "synapse.app.media_repository" and media["resources"] == ["media"]
    background = next(w for w in result["workers"] if w["name"] == "background1")
    assert not background["routed"] and background["resources"] == ["health"]


def test_large_shards_events_over_two_writers():
    result = layout({"hs1": "large", "hs2": "large", "hs3": "large"})
    assert result["errors"] == []
    assert result["stream_writers"]["events"] == ["events1", "events2"]
    assert result["stream_writers"]["typing"] == ["writer1"]
    assert len(result["pools"]["sync"]) == 1 + 2 + 2


def test_explicit_lists():
    result = layout({"hs1": [{"name": "persister", "duties": ["events"]}],
                     "hs2": [{"name": "syncer", "duties": ["sync", "sync"]}]})
    assert result["errors"] == []
    assert result["workers"][1]["duties"] == ["sync"]
    assert result["stream_writers"] == {"events": ["persister"]}
    assert result["workers"][0]["routed"] is False and result["workers"][0]["replication_port"] == 9101


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ({"hs1": "medium"}, "use none, small, large or a list"),
        ({"hs1": 3}, "must be a preset name or a list"),
        ({"hs1": "none", "hs2": "none"}, "runs workers only"),
        ({"hs1": [{"name": "Sync", "duties": ["sync"]}]}, "must match"),
        ({"hs1": [{"name": "s", "duties": ["syncing"]}]}, "unknown duties ['syncing']"),
        ({"hs1": [{"name": "s", "duties": []}]}, "non-empty list of duties"),
        ({"hs1": [{"name": "s", "duties": ["sync"], "port": 1}]}, "must be {name, duties}"),
        ({"hs1": [{"name": "main", "duties": ["sync"]}]}, "used twice"),
        ({"hs1": [{"name": "a", "duties": ["sync"]}], "hs2": [{"name": "a", "duties": ["client"]}]}, "a is used twice"),
        ({"hs1": [{"name": "a", "duties": ["typing"]}, {"name": "b", "duties": ["typing"]}]}, "typing takes one worker"),
        ({"hs1": "none", "hs2": [{"name": "m", "duties": ["media"]}]}, "media workers run on hs1"),
        ({"hs1": "small", "hs2": [{"name": "t", "duties": ["typing"]}]}, "typing takes one worker"),
    ],
)
def test_refused_layouts_say_why(specs, message):
    errors = layout(specs)["errors"]
    assert any(message in e for e in errors), errors


def test_pool_upstreams_use_the_proxys_address_of_each_host():
    pools = layout({"hs1": "small", "hs2": "small"})["pools"]
    upstreams = workers.matrix_synapse_pool_upstreams(pools, {"hs1": "10.0.0.2", "hs2": "fd00::3"})
    assert upstreams["sync"] == ["10.0.0.2:8104", "[fd00::3]:8101"]
    with pytest.raises(Exception, match="no address for hs2"):
        workers.matrix_synapse_pool_upstreams(pools, {"hs1": "10.0.0.2"})
