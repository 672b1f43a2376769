"""The restore drill (playbooks/restore.yml, docs/operations.md "Restore"), on the converged stack.

One module fixture runs the whole drill, in order:
1. A client writes a message and a file; a backup runs; the client then writes a second message
   (after the backup: the drill's recovery point lies between the two).
2. Two restores that must be refused before any host is changed: over the live database, and
   from a snapshot that does not exist.
3. The homeserver's data is destroyed: its Synapse database is dropped on the database host, and
   on the homeserver Synapse's releases, configuration, signing key and media, and the backup's
   settings, SSH key and state are deleted (as on a new machine).
4. playbooks/restore.yml, timed, from the inventory alone.
The checks then compare the stack before and after. conftest.py runs this file last: the other
test files check the stack that the drill destroys and restores.

The drill destroys data, so it runs only where the scenario asks for it (MATRIX_RESTORE_DRILL=1:
multi-host, where the repository is on the backup host over SFTP).
"""
import hashlib
import json
import os
import time

import pytest

from conftest import EPHEMERAL, first, journal, recap, run_playbook, server

import matrix_e2e as e2e  # noqa: E402 (tests/e2e, put on the path by conftest)
from test_matrix_e2e import config, http, run, users  # noqa: F401 (the shared client fixtures)

pytestmark = pytest.mark.skipif(os.environ.get("MATRIX_RESTORE_DRILL") != "1",
                                reason="the restore drill is not enabled for this scenario (MATRIX_RESTORE_DRILL=1)")

HOMESERVER = first("matrix_homeserver")
DATABASE = first("matrix_db")
SIGNING_KEY = "/etc/matrix-synapse/signing.key"
# What a lost homeserver loses: Synapse's releases, configuration, keys and data, and the
# backup's settings, SSH key and state (the repository password is in the inventory).
LOST = "/opt/synapse /etc/matrix-synapse /var/lib/matrix-synapse /etc/matrix-backup /var/lib/matrix-backup"


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

    refusals = {
        "live": run_playbook("restore.yml"),
        "unknown": run_playbook("restore.yml", "-e", "matrix_restore_snapshot=0123abcd"),
    }
    still = {"event": event(run, http, config, token, room, after_backup).status, "tables": table_count(homeserver)}

    lost_at = time.time()
    homeserver.check_output("systemctl stop matrix-synapse.service matrix-backup.timer")
    server(DATABASE).check_output("runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -c %s",
                                  "DROP DATABASE synapse WITH (FORCE)")
    homeserver.check_output(f"rm -rf {LOST}")
    gone = homeserver.run("test -e %s", SIGNING_KEY).rc != 0

    start = time.monotonic()
    restored = run_playbook("restore.yml")
    seconds = time.monotonic() - start
    figures = {"snapshot": snapshot["snapshot_id"][:8], "backup_seconds": snapshot["seconds"],
               "restore_seconds": round(seconds), "lost_to_serving_seconds": round(time.time() - lost_at)}
    (EPHEMERAL / "restore-drill.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"restore drill: {figures}")
    try:
        decrypted = run(e2e.read_encrypted_event(bob, before["exchange"].room_id, before["exchange"].event_id))
    except e2e.CheckError as exc:
        decrypted = f"ERROR {exc}"
    return {"token": token, "decrypted": decrypted, "before": before, "after_backup": after_backup, "refusals": refusals,
            "still": still, "gone": gone, "restored": restored, "homeserver": homeserver}


def test_a_restore_over_the_live_database_is_refused_and_changes_nothing(drill):
    live = drill["refusals"]["live"]
    assert live.returncode != 0
    assert "Restore refused, nothing changed: the database synapse" in live.stderr, live.stdout[-3000:] + live.stderr
    # Refused in the check before the baseline: no task changed anything on any host.
    hosts = recap(live.stdout)
    assert hosts and all(counts["changed"] == 0 for counts in hosts.values()), live.stdout[-3000:]
    assert drill["still"]["event"] == 200, "a message written after the backup was lost by a refused restore"
    assert drill["still"]["tables"] == drill["before"]["tables"]


def test_a_restore_from_an_unknown_snapshot_is_refused(drill):
    unknown = drill["refusals"]["unknown"]
    assert unknown.returncode != 0
    assert 'Restore refused, nothing changed: no snapshot "0123abcd"' in unknown.stderr, unknown.stdout[-3000:] + unknown.stderr


def test_the_restore_playbook_succeeds_on_the_emptied_hosts(drill):
    assert drill["gone"], "the drill did not delete the signing key"
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
