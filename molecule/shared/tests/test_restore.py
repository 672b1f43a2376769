"""The restore drill (playbooks/restore.yml, docs/operations.md "Restore"), on the converged stack.

One module fixture runs the whole drill, in order:
1. A client writes a message and a file; a backup runs; the client then writes a second message
   (after the backup: the drill's recovery point lies between the two).
2. Four restores that must be refused before any host is changed, on the live stack: over the
   live database, from a snapshot that does not exist, with a wrong repository key, and from a
   snapshot made by a newer database schema than the release to run knows (a snapshot whose
   metadata says so, saved here: the pinned and the older release share one schema).
3. The database and homeserver hosts are lost: their containers are removed and fresh ones
   created (conftest.recreate_containers, the scenario's own create and prepare playbooks).
4. playbooks/restore.yml, timed, from the inventory alone.
The checks then compare the stack before and after. conftest.py runs this file last: the other
test files check the stack that the drill destroys and restores.

The drill destroys data, so it runs only where the scenario asks for it (MATRIX_RESTORE_DRILL=1:
multi-host, where the repository is on the backup host over SFTP).
"""
import concurrent.futures
import hashlib
import json
import os
import secrets
import time

import pytest

from conftest import EPHEMERAL, first, journal, recap, recreate_containers, run_playbook, server

import matrix_e2e as e2e  # noqa: E402 (tests/e2e, put on the path by conftest)
from test_matrix_e2e import config, http, run, users  # noqa: F401 (the shared client fixtures)

pytestmark = pytest.mark.skipif(os.environ.get("MATRIX_RESTORE_DRILL") != "1",
                                reason="the restore drill is not enabled for this scenario (MATRIX_RESTORE_DRILL=1)")

HOMESERVER = first("matrix_homeserver")
DATABASE = first("matrix_db")
SIGNING_KEY = "/etc/matrix-synapse/signing.key"
# A snapshot of the homeserver's that claims a schema no release knows yet (only its metadata).
NEWER_SCHEMA = {"format": 1, "synapse_version": "9.0.0", "schema_version": 999, "schema_compat_version": 999,
                "toolkit_version": "restore-drill", "database_dump": "synapse.pgdump"}


def send(run, http, config, token, room, text):  # noqa: F811 (fixtures)
    """A text message in the room: its event ID."""
    answer = run(e2e.send_text(http, config, token, room, text))
    assert answer.status == 200, answer.text()
    return answer.json()["event_id"]


def event(run, http, config, token, room, event_id):  # noqa: F811 (fixtures)
    return run(e2e.get_event(http, config, token, room, event_id))


def table_count(homeserver):
    return int(homeserver.check_output(
        "bash -c %s", "set -a; . /etc/matrix-backup/backup.env; "
        "psql -XAt -c \"SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'\""))


def save_newer_schema_snapshot(homeserver):
    """Saves NEWER_SCHEMA as this host's newest snapshot (as `matrix-backup run` lays out
    metadata.json): its ID."""
    summary = homeserver.check_output("bash -c %s", (
        "set -euo pipefail; set -a; . /etc/matrix-backup/backup.env; set +a; d=/var/lib/matrix-backup/snapshot; "
        f"rm -rf $d; mkdir -p $d; printf '%s' '{json.dumps(NEWER_SCHEMA)}' > $d/metadata.json; "
        'matrix-backup restic backup --json --host "$BACKUP_HOST" --tag matrix --tag restore-drill $d | tail -n 1; rm -rf $d'))
    return json.loads(summary)["snapshot_id"]


def refused(result, message):
    """A restore refused with `message` in its error, and no task changed anything on any host."""
    assert result.returncode != 0, result.stdout[-3000:]
    assert message in result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    hosts = recap(result.stdout)
    assert hosts and all(counts["changed"] == 0 for counts in hosts.values()), result.stdout[-3000:]


@pytest.fixture(scope="module")
def drill(config, users, run, http):  # noqa: F811 (fixtures)
    alice, bob = users.require()
    token = alice.access_token
    homeserver = server(HOMESERVER)
    room = run(e2e.create_room(http, config, token, "restore drill"))
    before = {"room": room, "text": e2e.random_text("before-backup")}
    before["event"] = send(run, http, config, token, room, before["text"])
    before["file"] = os.urandom(256 * 1024)
    before["mxc"] = run(e2e.upload_media(http, config, token, before["file"], "restore-drill.bin"))
    before["secret"] = e2e.random_text("encrypted-before-backup")
    before["exchange"] = run(e2e.exchange_encrypted_message(alice, bob, http, before["secret"], keep_room=True), timeout=150)
    before["signing_key"] = homeserver.check_output("sha256sum %s", SIGNING_KEY).split()[0]
    before["tables"] = table_count(homeserver)

    backed_up = homeserver.run("systemctl start matrix-backup.service")
    assert backed_up.rc == 0, journal(HOMESERVER, "matrix-backup")
    snapshot = json.loads(homeserver.file("/var/lib/matrix-backup/last-success.json").content_string)
    after_backup = send(run, http, config, token, room, e2e.random_text("after-backup"))

    newer = save_newer_schema_snapshot(homeserver)
    # Side by side: each is refused in its checks, which change nothing and take no exclusive lock.
    attempts = {
        "live": ["-e", f"matrix_restore_snapshot={snapshot['snapshot_id']}"],
        "unknown": ["-e", "matrix_restore_snapshot=0123abcd"],
        "wrong_key": ["-e", json.dumps({"matrix_backup_repository_password": secrets.token_urlsafe(33)})],
        "newer_schema": ["-e", f"matrix_restore_snapshot={newer}"],
    }
    with concurrent.futures.ThreadPoolExecutor(len(attempts)) as pool:
        running = {name: pool.submit(run_playbook, "restore.yml", *extra) for name, extra in attempts.items()}
        refusals = {name: future.result() for name, future in running.items()}
    homeserver.check_output("matrix-backup restic forget %s", newer)
    still = {"event": event(run, http, config, token, room, after_backup).status, "tables": table_count(homeserver)}

    # The database and homeserver hosts are lost; fresh ones take their names.
    lost_at = time.time()
    start = time.monotonic()
    fresh = recreate_containers(DATABASE, HOMESERVER)
    hosts_seconds = time.monotonic() - start
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-2000:]
    gone = {"signing key": homeserver.run("test -e %s", SIGNING_KEY).rc != 0,
            "PostgreSQL": server(DATABASE).run("test -e /var/lib/postgresql").rc != 0}

    start = time.monotonic()
    restored = run_playbook("restore.yml")
    seconds = time.monotonic() - start
    figures = {"snapshot": snapshot["snapshot_id"][:8], "backup_seconds": snapshot["seconds"],
               "backup_bytes_processed": snapshot["total_bytes_processed"], "backup_bytes_added": snapshot["data_added_bytes"],
               "fresh_hosts_seconds": round(hosts_seconds), "restore_seconds": round(seconds),
               "lost_to_serving_seconds": round(time.time() - lost_at)}
    (EPHEMERAL / "restore-drill.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"restore drill: {figures}")
    try:
        decrypted = run(e2e.read_encrypted_event(bob, before["exchange"].room_id, before["exchange"].event_id))
    except e2e.CheckError as exc:
        decrypted = f"ERROR {exc}"
    return {"token": token, "decrypted": decrypted, "before": before, "after_backup": after_backup, "refusals": refusals,
            "still": still, "gone": gone, "restored": restored, "homeserver": homeserver}


def test_a_restore_over_the_live_database_is_refused_and_changes_nothing(drill):
    # Refused in the check before the baseline: no task changed anything on any host.
    refused(drill["refusals"]["live"], "Restore refused, nothing changed: the database synapse")
    assert drill["still"]["event"] == 200, "a message written after the backup was lost by a refused restore"
    assert drill["still"]["tables"] == drill["before"]["tables"]


def test_a_restore_from_an_unknown_snapshot_is_refused(drill):
    refused(drill["refusals"]["unknown"], 'Restore refused, nothing changed: no snapshot "0123abcd"')


def test_a_restore_with_a_wrong_repository_key_is_refused(drill):
    refused(drill["refusals"]["wrong_key"], "does not open with backup_repository_password (a wrong key?)")


def test_a_restore_of_a_newer_schema_than_the_release_knows_is_refused(drill):
    refused(drill["refusals"]["newer_schema"], "Restore refused, nothing changed: the snapshot was made by Synapse 9.0.0")


def test_the_restore_playbook_succeeds_on_fresh_hosts(drill):
    assert all(drill["gone"].values()), f"the fresh hosts are not empty: {drill['gone']}"
    restored = drill["restored"]
    assert restored.returncode == 0, restored.stdout[-4000:] + restored.stderr[-2000:]


def test_the_server_keeps_its_identity(drill):
    key = drill["homeserver"].check_output("sha256sum %s", SIGNING_KEY).split()[0]
    assert key == drill["before"]["signing_key"], "the restored homeserver has a new signing key"


def test_clients_stay_logged_in_and_read_the_messages_of_the_snapshot(drill, config, run, http):  # noqa: F811
    before = drill["before"]
    whoami = run(e2e.whoami(http, config, drill["token"]))
    assert whoami.startswith("@")
    found = event(run, http, config, drill["token"], before["room"], before["event"])
    assert found.status == 200, found.text()
    assert found.json()["content"]["body"] == before["text"]


def test_a_client_logs_in_again_on_the_restored_homeserver(drill, config, run, http, tmp_path):  # noqa: F811
    """A's password (from the restored database) opens a new session next to the old one."""
    async def log_in():
        client = e2e.new_client(config, http, config.user_a, str(tmp_path / "store"))
        try:
            await e2e.login(client, config.password_a)
            return await e2e.whoami(http, config, client.access_token)
        finally:
            await client.logout()

    assert run(log_in()) == config.user_id(config.user_a)


def test_encrypted_messages_of_the_snapshot_still_decrypt(drill):
    """B's client keeps its own key store: the message comes back from the restored database."""
    assert drill["decrypted"] == drill["before"]["secret"]


def test_what_was_written_after_the_backup_is_gone(drill, config, run, http):  # noqa: F811
    """The recovery point is the snapshot: proof that the data came from the repository."""
    found = event(run, http, config, drill["token"], drill["before"]["room"], drill["after_backup"])
    assert found.status == 404, found.text()


def test_the_files_come_back_byte_for_byte(drill, config, run, http):  # noqa: F811
    before = drill["before"]
    answer = run(e2e.download_media(http, config, drill["token"], before["mxc"]))
    assert answer.status == 200, answer.text()
    assert hashlib.sha256(answer.body).hexdigest() == hashlib.sha256(before["file"]).hexdigest()


def test_the_restored_homeserver_takes_new_messages(drill, config, run, http):  # noqa: F811
    assert send(run, http, config, drill["token"], drill["before"]["room"], e2e.random_text("after-restore"))


def test_backups_run_again_after_the_restore(drill):
    homeserver = drill["homeserver"]
    assert homeserver.service("matrix-backup.timer").is_running
    result = homeserver.run("systemctl start matrix-backup.service")
    assert result.rc == 0, journal(HOMESERVER, "matrix-backup")
