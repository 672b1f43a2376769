"""Backups of the homeserver (roles/backup): what a snapshot holds, byte for byte, that the
repository is encrypted, that the backup host's account is SFTP only, and that a failed run is
visible. One run of the backup service serves every check (module fixture `snapshot`).

With a matrix_backup host (multi-host) the repository is on it, over SFTP; without one
(default), a local path on the homeserver.
"""
import hashlib
import json
import os
import pathlib
import sys

import pytest

from conftest import first, hosts_of, journal, server

import matrix_e2e as e2e  # noqa: E402 (tests/e2e, put on the path by conftest)
from test_matrix_e2e import config, http, run, users  # noqa: F401 (the shared client fixtures)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from unit_security import MAX_EXPOSURE, exposure, open_items  # noqa: E402

HOMESERVER = first("matrix_homeserver")
BACKUP_HOSTS = hosts_of("matrix_backup")
STAGING = "/var/lib/matrix-backup/snapshot"
LAST = "/var/lib/matrix-backup/last-success.json"
CONFIG_DIR = "/etc/matrix-synapse"
MEDIA = "/var/lib/matrix-synapse/media_store"
LOCAL_REPOSITORY = "/var/backups/matrix/restic"
REMOTE_REPOSITORIES = "/srv/matrix-backup/repositories"


def start_backup(host):
    """One run of the service, as the timer starts it; (exit status of systemctl, Result)."""
    result = host.run("systemctl start matrix-backup.service")
    state = host.check_output("systemctl show --property=Result --value matrix-backup.service")
    return result.rc, state


@pytest.fixture(scope="module")
def homeserver():
    return server(HOMESERVER)


@pytest.fixture(scope="module")
def uploaded(config, users, run, http):  # noqa: F811 (fixtures)
    """A file uploaded by a client before the backup: (mxc URI, bytes)."""
    alice, _ = users.require()
    data = os.urandom(192 * 1024)
    mxc = run(e2e.upload_media(http, config, alice.access_token, data, "backup-check.bin"))
    return mxc, data


@pytest.fixture(scope="module")
def snapshot(homeserver, uploaded):
    """The backup run of this module: (last-success record, {path in the snapshot})."""
    code, state = start_backup(homeserver)
    assert code == 0 and state == "success", f"backup failed ({state}):\n{journal(HOMESERVER, 'matrix-backup')}"
    last = json.loads(homeserver.file(LAST).content_string)
    listing = homeserver.check_output("matrix-backup restic ls --json %s", last["snapshot_id"])
    paths = set()
    for line in listing.splitlines():
        node = json.loads(line)
        if node.get("struct_type") == "node":
            paths.add(node["path"])
    return last, paths


def piped(host, command, *args):
    """A shell pipeline that fails when any of its commands fails (bash -o pipefail)."""
    return host.run("bash -o pipefail -c %s", host.backend.quote(command, *args))


def dump(host, snapshot_id, path):
    """A file of the snapshot, read back from the repository (restic dump)."""
    return host.run("matrix-backup restic dump %s %s", snapshot_id, path)


def test_the_daily_backup_is_scheduled(homeserver):
    timer = homeserver.service("matrix-backup.timer")
    assert timer.is_enabled and timer.is_running
    assert homeserver.check_output("systemctl show --property=NextElapseUSecRealtime --value matrix-backup.timer")


def test_the_snapshot_holds_what_synapses_backup_guide_lists(snapshot):
    last, paths = snapshot
    for wanted in (f"{STAGING}/synapse.pgdump", f"{STAGING}/metadata.json", f"{CONFIG_DIR}/signing.key",
                   f"{CONFIG_DIR}/homeserver.yaml", f"{CONFIG_DIR}/secrets/macaroon_secret_key",
                   f"{MEDIA}/local_content"):
        assert wanted in paths, f"{wanted} is not in snapshot {last['snapshot_id'][:8]}"
    # Not the cache of other servers' media or of URL previews (fetched again when needed).
    assert not [p for p in paths if p.startswith((f"{MEDIA}/remote_content", f"{MEDIA}/url_cache"))]


def test_an_uploaded_file_is_saved_byte_for_byte(homeserver, uploaded, snapshot):
    mxc, data = uploaded
    media_id = mxc.rsplit("/", 1)[1]
    # Synapse's layout: local_content/ab/cd/efgh... for the media ID abcdefgh...
    path = f"{MEDIA}/local_content/{media_id[:2]}/{media_id[2:4]}/{media_id[4:]}"
    last, paths = snapshot
    assert path in paths
    saved = piped(homeserver, "matrix-backup restic dump %s %s | sha256sum", last["snapshot_id"], path)
    assert saved.rc == 0, saved.stderr
    assert saved.stdout.split()[0] == hashlib.sha256(data).hexdigest()


def test_the_signing_key_is_saved_as_it_is(homeserver, snapshot):
    last, _ = snapshot
    saved = piped(homeserver, "matrix-backup restic dump %s %s/signing.key | sha256sum", last["snapshot_id"], CONFIG_DIR)
    live = homeserver.check_output("sha256sum %s/signing.key", CONFIG_DIR)
    assert saved.rc == 0 and saved.stdout.split()[0] == live.split()[0]


def test_the_metadata_names_the_versions_in_force(homeserver, snapshot):
    last, _ = snapshot
    meta = json.loads(dump(homeserver, last["snapshot_id"], f"{STAGING}/metadata.json").stdout)
    version = homeserver.check_output("/opt/synapse/current/bin/python -c 'import synapse; print(synapse.__version__)'")
    schema = homeserver.check_output(
        "bash -c 'set -a; . /etc/matrix-backup/backup.env; psql -XAtc \"SELECT version FROM schema_version\"'")
    assert meta["synapse_version"] == version == last["synapse_version"]
    assert meta["schema_version"] == int(schema) == last["schema_version"]
    assert meta["toolkit_version"] and meta["time"].endswith("Z")
    assert meta["paths_missing"] in ([], [f"{MEDIA}/local_thumbnails"])


def test_the_database_dump_leaves_out_the_one_time_keys_only(homeserver, snapshot):
    last, _ = snapshot
    # Read back whole first: pg_restore --list stops reading once it has the table of contents,
    # and a restic killed by the closed pipe (SIGPIPE) would leave its lock in the repository.
    listing = piped(homeserver, "matrix-backup restic dump %s %s/synapse.pgdump > /tmp/listing.pgdump"
                    " && pg_restore --list /tmp/listing.pgdump; status=$?; rm -f /tmp/listing.pgdump; exit $status",
                    last["snapshot_id"], STAGING)
    assert listing.rc == 0, listing.stderr
    # The table is restored empty (keys already handed out must never be handed out again).
    assert " TABLE public e2e_one_time_keys_json " in listing.stdout
    assert " TABLE DATA public e2e_one_time_keys_json " not in listing.stdout
    for table in ("events", "users", "room_memberships", "e2e_device_keys_json", "local_media_repository"):
        assert f" TABLE DATA public {table} " in listing.stdout, table


def test_the_repository_is_encrypted(homeserver, snapshot):
    # Nothing of what was saved can be read in the repository's files: not the signing key,
    # not the server name that homeserver.yaml and the dump are full of.
    key = homeserver.check_output("cat %s/signing.key", CONFIG_DIR).split()[-1]
    where = server(BACKUP_HOSTS[0]) if BACKUP_HOSTS else homeserver
    repository = REMOTE_REPOSITORIES if BACKUP_HOSTS else LOCAL_REPOSITORY
    assert int(where.check_output("find %s -type f | wc -l", repository)) > 5
    for needle in (key, "example.test"):
        found = where.run("grep -rlaF -- %s %s", needle, repository)
        assert found.rc == 1 and not found.stdout, f"{needle!r} readable in {found.stdout}"


@pytest.mark.skipif(not BACKUP_HOSTS, reason="no matrix_backup host: the repository is local")
def test_the_backup_account_can_only_use_sftp(homeserver, snapshot):
    backup_host = BACKUP_HOSTS[0]
    address = server(backup_host).check_output("hostname -I").split()[0]
    ssh = ("ssh -F /dev/null -i /var/lib/matrix-backup/ssh/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes "
           "-o UserKnownHostsFile=/var/lib/matrix-backup/ssh/known_hosts -o StrictHostKeyChecking=yes "
           f"matrix-backup@{address}")
    shell = homeserver.run(f"{ssh} id")
    assert shell.rc != 0 and "uid=" not in shell.stdout, shell.stdout + shell.stderr
    # In its chroot, the account sees the repositories and nothing of the host.
    sftp = homeserver.run(f"printf 'ls /\\nget /etc/shadow /dev/null\\n' | sftp -b - -i "
                          "/var/lib/matrix-backup/ssh/id_ed25519 -o IdentitiesOnly=yes "
                          "-o UserKnownHostsFile=/var/lib/matrix-backup/ssh/known_hosts "
                          f"-o StrictHostKeyChecking=yes matrix-backup@{address}")
    assert sftp.rc != 0
    assert "/repositories" in sftp.stdout and "shadow" in (sftp.stdout + sftp.stderr)
    # The homeserver's repository is there, owned by the account, private.
    repo = server(backup_host).file(f"{REMOTE_REPOSITORIES}/{HOMESERVER}")
    assert repo.is_directory and repo.user == "matrix-backup" and repo.mode & 0o077 == 0


def test_a_failed_backup_is_visible_and_the_last_good_one_still_reported(homeserver, snapshot):
    last, _ = snapshot
    # The database refuses the dump (its password file is gone): the run fails, the unit is
    # left failed, and the status still names the last good snapshot.
    homeserver.check_output("mv /etc/matrix-backup/pgpass /etc/matrix-backup/pgpass.moved")
    try:
        code, state = start_backup(homeserver)
        failed = homeserver.run("systemctl is-failed matrix-backup.service").stdout.strip()
        status = homeserver.check_output("matrix-backup status")
    finally:
        homeserver.check_output("mv /etc/matrix-backup/pgpass.moved /etc/matrix-backup/pgpass")
    assert code != 0 and state == "exit-code" and failed == "failed"
    assert f"last good snapshot: {last['snapshot_id'][:8]}" in status
    # The next run succeeds again, by itself.
    code, state = start_backup(homeserver)
    assert code == 0 and state == "success", journal(HOMESERVER, "matrix-backup")


def test_the_backup_unit_is_sandboxed(homeserver):
    level, verdict, report = exposure(homeserver, "matrix-backup.service")
    assert level <= MAX_EXPOSURE, f"matrix-backup.service: {level} {verdict}\n{open_items(report)}"


def test_the_database_dump_restores_into_a_fresh_database(homeserver, snapshot, tmp_path):
    # The dump read back from the repository is restored on the database host into a scratch
    # database created as the restore procedure creates Synapse's (UTF8, locale C, template0):
    # the accounts and the rooms are all there.
    last, _ = snapshot
    db = server(first("matrix_db"))
    encoded = piped(homeserver, "matrix-backup restic dump %s %s/synapse.pgdump | base64 -w0",
                    last["snapshot_id"], STAGING)
    assert encoded.rc == 0, encoded.stderr
    encoded = encoded.stdout.strip()
    local = tmp_path / "synapse.pgdump"
    local.write_bytes(__import__("base64").b64decode(encoded))
    result = db.ansible("ansible.builtin.copy", f"src={local} dest=/var/tmp/restore-check.pgdump mode=0644",
                        check=False, become=True)
    assert not result.get("failed"), result
    psql = "runuser -u postgres -- psql -XAt -d %s -c %s"
    try:
        db.check_output("runuser -u postgres -- dropdb --if-exists restore_check")
        db.check_output("runuser -u postgres -- createdb --encoding=UTF8 --locale=C --template=template0 restore_check")
        restored = db.run("runuser -u postgres -- pg_restore --no-owner --exit-on-error -d restore_check "
                          "/var/tmp/restore-check.pgdump")
        assert restored.rc == 0, restored.stderr
        for query in ("SELECT count(*) FROM users", "SELECT count(*) FROM rooms",
                      "SELECT version FROM schema_version"):
            live = db.check_output(psql, "synapse", query)
            copy = db.check_output(psql, "restore_check", query)
            assert copy == live, f"{query}: {copy} restored, {live} live"
        assert db.check_output(psql, "restore_check", "SELECT count(*) FROM e2e_one_time_keys_json") == "0"
    finally:
        db.run("runuser -u postgres -- dropdb --if-exists restore_check")
        db.run("rm -f /var/tmp/restore-check.pgdump")
