"""The Synapse upgrade drill (playbooks/tiers/homeserver.yml, docs/operations.md "Upgrades").

The scenario converges an older release (MATRIX_UPGRADE_FROM, passed to its playbooks as
synapse_version); one module fixture then runs, in order:
1. Two end-to-end encrypted messages (A to B, each in its own room) and a file; then an upgrade
   the database is too new for (its compatibility version raised to 999 for the drill), which
   must be refused while the older release keeps serving (the same process).
2. An upgrade to the pinned release that fails: a configuration extension that passes Synapse's
   configuration check but stops it from starting (it names a database that does not exist).
   The play must roll back by itself: the older release serves again with its configuration and
   the pre-upgrade database, and the run fails saying so.
3. The upgrade to the pinned release, as an operator runs it (playbooks/homeserver.yml).
After 2 and after 3, B's client (its own key store) fetches both messages again from the
homeserver and decrypts them; the file is downloaded again.
4. An Element web upgrade that fails its health check: a tarball whose version file is right but
   whose page nginx may not read (mode 0600), built here from the fixture. The proxy tier must
   point Element web back at the live release and fail saying so. Every test file that runs after this
one checks the upgraded stack (conftest.py runs this file first).
"""
import hashlib
import io
import json
import os
import pathlib
import tarfile
import time

import pytest

from conftest import EPHEMERAL, REPO, first, run_playbook, server

import matrix_e2e as e2e  # noqa: E402 (tests/e2e, put on the path by conftest)
from test_matrix_e2e import config, http, run, users  # noqa: F401 (the shared client fixtures)

FROM = os.environ.get("MATRIX_UPGRADE_FROM", "")
pytestmark = pytest.mark.skipif(not FROM, reason="no upgrade drill in this scenario (MATRIX_UPGRADE_FROM)")

HOMESERVER = first("matrix_homeserver")
DATABASE = first("matrix_db")
# Passes `python -m synapse.config` (which does not connect), fails at start: the database
# server refuses the connection at once (no such database for that role in pg_hba.conf; a wrong
# port would instead wait for TCP to give up where the firewall drops the packets).
FAULTY = {"synapse_config_extension": {"database": {"args": {"dbname": "synapse_missing"}}}}


def psql(database, statement):
    """One statement in the Synapse database, as PostgreSQL's superuser on its host."""
    return database.check_output("runuser -u postgres -- psql -XAt -v ON_ERROR_STOP=1 -d synapse -c %s", statement)


def main_pid(host):
    return host.check_output("systemctl show -p MainPID --value matrix-synapse.service")


def release(host, link="current"):
    """The release a link points at ("" without the link)."""
    return host.run("readlink -e /opt/synapse/%s", link).stdout.strip().rsplit("/", 1)[-1]


def observe(run, http, config, alice, bob, messages, mxc):  # noqa: F811 (fixtures)
    """What the clients see now: each message's decrypted text (or the error), the file's hash."""
    texts = []
    for exchange in messages:
        try:
            texts.append(run(e2e.read_encrypted_event(bob, exchange.room_id, exchange.event_id)))
        except e2e.CheckError as exc:
            texts.append(f"ERROR {exc}")
    answer = run(e2e.download_media(http, config, alice.access_token, mxc))
    return {"texts": texts, "file": hashlib.sha256(answer.body).hexdigest() if answer.status == 200 else answer.status}


def unreadable_element_release(version):
    """The fixture of the live Element web release, repacked as `version` with its index.html
    readable by root only: (tarball, sha256)."""
    fixture = sorted((REPO / ".cache" / "fixtures").glob("element-v*-fixture.tar.gz"))[-1]
    out = pathlib.Path(EPHEMERAL) / f"element-v{version}-unreadable.tar.gz"
    with tarfile.open(fixture) as source, tarfile.open(out, "w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            member.name = "/".join([f"element-v{version}"] + member.name.split("/")[1:])
            if member.name.endswith("/version"):
                data = f"{version}\n".encode()
                member.size = len(data)
            if member.name.endswith("/index.html"):
                member.mode = 0o600
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    return out, hashlib.sha256(out.read_bytes()).hexdigest()


def element_version(run, http, config):  # noqa: F811 (fixtures)
    answer = run(e2e.http_request(http, "GET", f"https://{config.element_fqdn}/version"))
    return answer.text().strip() if answer.status == 200 else answer.status


def pre_upgrade_snapshots(host):
    listing = host.check_output("matrix-backup restic snapshots --json --tag pre-upgrade")
    return json.loads(listing)


@pytest.fixture(scope="module")
def drill(config, users, run, http):  # noqa: F811 (fixtures)
    alice, bob = users.require()
    homeserver = server(HOMESERVER)
    started = release(homeserver)
    snapshots_before = {s["id"] for s in pre_upgrade_snapshots(homeserver)}
    texts = [e2e.random_text(f"before-upgrade-{n}") for n in (1, 2)]
    messages = [run(e2e.exchange_encrypted_message(alice, bob, http, text, keep_room=True), timeout=150)
                for text in texts]
    data = os.urandom(300 * 1024)
    mxc = run(e2e.upload_media(http, config, alice.access_token, data, "upgrade-drill.bin"))

    # The database made "too new" for the pinned release (its compatibility version raised for
    # the drill): the upgrade must be refused before Synapse stops.
    database = server(DATABASE)
    compat = int(psql(database, "SELECT compat_version FROM schema_compat_version"))
    pid = main_pid(homeserver)
    psql(database, "UPDATE schema_compat_version SET compat_version = 999")
    try:
        start = time.monotonic()
        too_new = run_playbook("homeserver.yml")
        too_new_seconds = time.monotonic() - start
    finally:
        psql(database, f"UPDATE schema_compat_version SET compat_version = {compat}")
    too_new_after = {"release": release(homeserver), "same_process": main_pid(homeserver) == pid}

    start = time.monotonic()
    failed = run_playbook("homeserver.yml", "-e", json.dumps(FAULTY))
    failed_seconds = time.monotonic() - start
    after_failed = observe(run, http, config, alice, bob, messages, mxc)
    after_failed["release"] = release(homeserver)
    after_failed["kept_config"] = homeserver.file("/etc/matrix-synapse/homeserver.yaml.previous").exists
    after_failed["config_has_fault"] = "synapse_missing" in homeserver.file("/etc/matrix-synapse/homeserver.yaml").content_string

    start = time.monotonic()
    upgraded = run_playbook("homeserver.yml")
    upgrade_seconds = time.monotonic() - start
    after = observe(run, http, config, alice, bob, messages, mxc)
    after["release"] = release(homeserver)
    after["previous"] = release(homeserver, "previous")

    element_before = element_version(run, http, config)
    tarball, digest = unreadable_element_release("0.0.1")
    start = time.monotonic()
    element_failed = run_playbook("proxy.yml", "-e", json.dumps({
        "element_web_version": "0.0.1", "element_web_archive_src": str(tarball), "element_web_checksum": f"sha256:{digest}"}))
    element_seconds = time.monotonic() - start
    element_after = element_version(run, http, config)

    figures = {"from": started, "to": after["release"], "refused_upgrade_seconds": round(too_new_seconds),
               "failed_upgrade_and_rollback_seconds": round(failed_seconds),
               "upgrade_seconds": round(upgrade_seconds), "element_failed_upgrade_and_rollback_seconds": round(element_seconds)}
    (EPHEMERAL / "upgrade-drill.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"upgrade drill: {figures}")
    return {"element_before": element_before, "element_failed": element_failed, "element_after": element_after,
            "started": started, "too_new": too_new, "too_new_after": too_new_after, "snapshots_before": snapshots_before, "texts": texts, "file": hashlib.sha256(data).hexdigest(), "failed": failed,
            "after_failed": after_failed, "upgraded": upgraded, "after": after, "homeserver": homeserver}


def test_the_drill_starts_from_the_older_release(drill):
    assert drill["started"] == FROM


def test_an_upgrade_the_database_is_too_new_for_is_refused_while_the_older_release_serves(drill):
    refused = drill["too_new"]
    assert refused.returncode != 0, refused.stdout[-3000:]
    said = " ".join(refused.stderr.split())
    assert "cannot run on this database" in said and "needs 999 or later" in said, refused.stdout[-3000:] + said[-3000:]
    assert f"Synapse {FROM} serves as before" in said, said[-3000:]
    # Never stopped: the same process serves, and no pre-upgrade backup was taken (below).
    assert drill["too_new_after"] == {"release": FROM, "same_process": True}


def test_a_failed_upgrade_rolls_back_and_says_so(drill):
    failed = drill["failed"]
    assert failed.returncode != 0, failed.stdout[-3000:]
    assert f"Rolled back: Synapse {FROM} serves again" in failed.stderr, failed.stdout[-3000:] + failed.stderr[-3000:]


def test_after_the_rollback_the_older_release_serves_every_message(drill):
    seen = drill["after_failed"]
    assert seen["release"] == FROM
    assert not seen["config_has_fault"], "the rollback left the faulty configuration in place"
    assert not seen["kept_config"], "the configuration kept for the rollback was not cleaned up"
    assert seen["texts"] == drill["texts"]
    assert seen["file"] == drill["file"]


def test_the_upgrade_keeps_every_message(drill):
    upgraded = drill["upgraded"]
    assert upgraded.returncode == 0, upgraded.stdout[-4000:] + upgraded.stderr[-2000:]
    seen = drill["after"]
    assert seen["release"] != FROM
    assert seen["texts"] == drill["texts"]
    assert seen["file"] == drill["file"]


def test_the_older_release_is_kept_for_a_rollback_by_hand(drill):
    assert drill["after"]["previous"] == FROM


def test_each_upgrade_attempt_was_backed_up_first_and_is_kept(drill):
    snapshots = [s for s in pre_upgrade_snapshots(drill["homeserver"]) if s["id"] not in drill["snapshots_before"]]
    attempts = [s for s in snapshots if f"from-{FROM}" in s.get("tags", [])]
    assert len(attempts) == 2, snapshots
    assert all(f"synapse-{FROM}" in s["tags"] for s in attempts), snapshots


def test_a_failed_element_web_upgrade_rolls_back_and_says_so(drill):
    failed = drill["element_failed"]
    assert failed.returncode != 0, failed.stdout[-3000:]
    before = drill["element_before"]
    assert f"Rolled back: Element web {before} is served again" in failed.stderr, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert drill["element_after"] == before
