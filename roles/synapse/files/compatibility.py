"""Can this Synapse release run on the live database? Run with the release's own Python, as
root, with the homeserver.yaml whose database Synapse uses (tasks/compatibility.yml). Prints one
JSON object: the release's schema version; the database's schema version and compatibility
version (the oldest schema a Synapse may know to use it); PostgreSQL's version and the oldest
one the release accepts (when its engine states it). Connects the way Synapse does (the
configuration's database arguments: TLS, password file), reads only."""
import json
import pathlib
import re
import sys

import psycopg2
import synapse
import yaml
from synapse.storage.schema import SCHEMA_VERSION

POOL_ONLY = {"cp_min", "cp_max", "cp_reconnect", "cp_openfun", "cp_noisy"}

database = yaml.safe_load(pathlib.Path(sys.argv[1]).read_text())["database"]
args = {key: value for key, value in (database.get("args") or {}).items() if key not in POOL_ONLY}
with psycopg2.connect(**args) as connection, connection.cursor() as cursor:
    cursor.execute("SHOW server_version_num")
    postgresql = int(cursor.fetchone()[0])
    cursor.execute("SELECT to_regclass('schema_version') IS NOT NULL, to_regclass('schema_compat_version') IS NOT NULL")
    has_version, has_compat = cursor.fetchone()
    schema = compat = None
    if has_version:
        cursor.execute("SELECT version FROM schema_version")
        schema = cursor.fetchone()[0]
    if has_compat:
        cursor.execute("SELECT compat_version FROM schema_compat_version")
        row = cursor.fetchone()
        compat = row[0] if row else None
connection.close()

# "Synapse requires PostgreSQL 14 or above." (synapse/storage/engines/postgres.py)
engine = pathlib.Path(synapse.__file__).parent / "storage" / "engines" / "postgres.py"
stated = re.search(r"requires PostgreSQL (\d+) or above", engine.read_text())
print(json.dumps({
    "release": synapse.__version__,
    "release_schema": SCHEMA_VERSION,
    "database_schema": schema,
    "database_compat": compat,
    "postgresql": postgresql,
    "postgresql_minimum": int(stated[1]) * 10000 if stated else None,
}))
