"""Register benchmark accounts through Synapse's shared-secret registration (admin API).

Runs ON the homeserver host (scripts/bench-load.sh pipes it to `docker exec ... python3 -`),
against the main process's loopback listener: the toolkit's proxy does not serve
/_synapse/admin, and no login is needed (Synapse's login rate limit would throttle a hundred
logins from one address). Standard library only. Arguments: base URL, shared secret, prefix,
count. Prints one JSON list: [{user_id, access_token, device_id}, ...].
"""
import concurrent.futures
import hashlib
import hmac
import json
import secrets
import sys
import urllib.request


def call(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def register(base, secret, localpart):
    nonce = call(f"{base}/_synapse/admin/v1/register")["nonce"]
    password = secrets.token_urlsafe(18)
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join(part.encode() for part in (nonce, localpart, password, "notadmin")))
    answer = call(f"{base}/_synapse/admin/v1/register", {
        "nonce": nonce, "username": localpart, "password": password, "admin": False,
        "mac": mac.hexdigest()})
    return {"user_id": answer["user_id"], "access_token": answer["access_token"], "device_id": answer["device_id"]}


def main():
    base, secret, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    # Four at a time: Synapse hashes each password (bcrypt) in a thread pool.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        users = list(pool.map(lambda i: register(base, secret, f"{prefix}{i:04d}"), range(count)))
    json.dump(users, sys.stdout)


if __name__ == "__main__":
    main()
