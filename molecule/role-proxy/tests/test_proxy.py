"""The proxy tier as an operator, a browser and another server see it.

Hosts: certificates (staging CA), element_web (fixture tarball) and nginx in
front of an echo server standing in for Synapse (prepare.yml). Federation is
on, on port 8448.
"""
import http.client
import json
import ssl

import pytest

from conftest import ELEMENT_FQDN, HOMESERVER_FQDN, SERVER_NAME, tls_context

ELEMENT_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "no-referrer",
}


# --- On the host ------------------------------------------------------------

def test_key_is_readable_by_root_and_ssl_cert_only(host):
    key = host.file("/etc/ssl/matrix/matrix.key")
    assert key.is_file
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)


def test_chain_is_the_host_certificate_then_the_ca(host):
    chain = host.file("/etc/ssl/matrix/matrix.crt").content_string
    assert chain.count("BEGIN CERTIFICATE") == 2
    out = host.check_output(
        "openssl x509 -in /etc/ssl/matrix/matrix.crt -noout -subject -ext subjectAltName -issuer"
    )
    for name in (HOMESERVER_FQDN, SERVER_NAME, ELEMENT_FQDN):
        assert f"DNS:{name}" in out
    assert "Matrix staging CA" in out


def test_ca_key_stays_on_the_controller(host):
    assert not host.run("find / -xdev -name ca.key -print -quit").stdout.strip()


def test_services_on_the_host_trust_the_staging_ca(host):
    # Python's default context reads the system trust store.
    probe = (
        "import socket, ssl; c = ssl.create_default_context(); "
        "s = c.wrap_socket(socket.create_connection(('127.0.0.1', 443)), server_hostname='matrix.example.test'); "
        "print(s.version())"
    )
    assert host.check_output(f'python3 -c "{probe}"').startswith("TLSv1.")


def test_nginx_runs_with_a_valid_configuration(host):
    assert host.service("nginx").is_running
    assert host.service("nginx").is_enabled
    assert host.run("nginx -t").rc == 0
    assert not host.file("/etc/nginx/sites-enabled/default").exists


def test_element_release_is_switched_in_by_link(host):
    current = host.file("/var/www/element-web/current")
    assert current.is_symlink
    assert current.linked_to.startswith("/var/www/element-web/releases/")
    config = json.loads(host.file(current.linked_to + "/config.json").content_string)
    assert config["default_server_config"]["m.homeserver"]["base_url"] == "https://matrix.example.test"


# --- TLS ----------------------------------------------------------------------

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_accepted(client, version):
    assert client.handshake(HOMESERVER_FQDN, context=tls_context(version, version)) == {
        ssl.TLSVersion.TLSv1_2: "TLSv1.2",
        ssl.TLSVersion.TLSv1_3: "TLSv1.3",
    }[version]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_before_1_2_is_refused_by_the_server(client, version):
    context = tls_context(version, version)
    # Let the client offer the old protocol at all (OpenSSL's default
    # security level would refuse before anything is sent).
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as refused:
        client.handshake(HOMESERVER_FQDN, context=context)
    # The server's protocol_version alert, not a client-side refusal.
    assert "TLSV1_ALERT_PROTOCOL_VERSION" in str(refused.value)


def test_unknown_names_get_no_certificate(client):
    with pytest.raises(ssl.SSLError) as refused:
        client.handshake("unknown.example.test")
    # ssl_reject_handshake: an unrecognized_name alert instead of a certificate.
    assert "UNRECOGNIZED_NAME" in str(refused.value)


def test_weak_ciphers_are_refused(client):
    context = tls_context(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("AES128-SHA:AES256-SHA:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises(ssl.SSLError):
        client.handshake(HOMESERVER_FQDN, context=context)


def test_server_does_not_tell_its_version(client):
    assert client.request(HOMESERVER_FQDN, "/").header("Server") == "nginx"


# --- Plain HTTP ---------------------------------------------------------------

@pytest.mark.parametrize("name", [SERVER_NAME, HOMESERVER_FQDN, ELEMENT_FQDN])
def test_http_redirects_to_https(client, name):
    response = client.plain_http(name, "/some/path?x=1")
    assert response.status == 301
    assert response.header("Location") == f"https://{name}/some/path?x=1"


def test_http_for_an_unknown_name_is_dropped(client):
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        client.plain_http("unknown.example.test")


# --- Delegation (server name) ---------------------------------------------------

def test_well_known_client_points_at_the_homeserver(client):
    response = client.request(SERVER_NAME, "/.well-known/matrix/client")
    assert response.status == 200
    assert response.header("Content-Type").startswith("application/json")
    assert response.header("Access-Control-Allow-Origin") == "*"
    assert response.json() == {"m.homeserver": {"base_url": "https://matrix.example.test"}}


def test_well_known_server_delegates_federation_to_8448(client):
    response = client.request(SERVER_NAME, "/.well-known/matrix/server")
    assert response.status == 200
    assert response.header("Content-Type").startswith("application/json")
    assert response.json() == {"m.server": "matrix.example.test:8448"}


def test_server_name_serves_nothing_else(client):
    assert client.request(SERVER_NAME, "/").status == 404
    assert client.request(SERVER_NAME, "/_matrix/client/versions").status == 404


# --- Homeserver -------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/_matrix/client/versions", "/_synapse/client/oidc/callback"])
def test_client_api_reaches_synapse_with_forwarding_headers(client, path):
    response = client.request(HOMESERVER_FQDN, path)
    assert response.status == 200
    seen = response.json()
    assert seen["fake_upstream"] and seen["target"] == path
    assert seen["headers"]["x-forwarded-proto"] == "https"
    assert seen["headers"]["x-forwarded-for"]
    assert seen["headers"]["host"] == f"{HOMESERVER_FQDN}:443"


def test_request_uri_is_passed_on_exactly(client):
    # Percent-escapes (%21 %3A %2F %40) must reach Synapse untouched, or
    # federation request signatures no longer verify.
    path = "/_matrix/federation/v1/state/%21room%3Aexample.test/x%2Fy?event_id=%24ev%3Aexample.test&u=%40a"
    seen = client.request(HOMESERVER_FQDN, path).json()
    assert seen["target"] == path


@pytest.mark.parametrize(
    "path",
    [
        "/_synapse/admin/v1/server_version",
        "/_synapse/admin/v2/users/%40admin%3Aexample.test",
        "/_synapse/metrics",
        "/",
        "/health",
    ],
)
def test_admin_api_and_everything_else_is_404(client, path):
    response = client.request(HOMESERVER_FQDN, path)
    assert response.status == 404
    assert not response.is_from_upstream()


def test_path_tricks_do_not_reach_the_admin_api(client):
    # nginx matches locations on the normalised path: /_matrix/../_synapse/admin
    # is /_synapse/admin, which is not proxied.
    status = client.raw_https(
        HOMESERVER_FQDN,
        b"GET /_matrix/../_synapse/admin/v1/server_version HTTP/1.1\r\nHost: matrix.example.test\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status.split()[1] in ("400", "404")


def test_uploads_up_to_the_limit_are_forwarded(client):
    body = b"x" * (2 * 1024 * 1024)  # above nginx's default 1 MB
    response = client.request(HOMESERVER_FQDN, "/_matrix/media/v3/upload", method="POST", body=body)
    assert response.status == 200
    assert response.json()["body_length"] == len(body)


def test_uploads_over_the_limit_are_refused(client):
    status = client.raw_https(
        HOMESERVER_FQDN,
        b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: matrix.example.test\r\n"
        b"Content-Length: 60000000\r\nConnection: close\r\n\r\n",
    )
    assert status.split()[1] == "413"


def test_federation_port_8448_reaches_synapse(client):
    response = client.request(HOMESERVER_FQDN, "/_matrix/federation/v1/version", port=8448)
    assert response.status == 200
    assert response.json()["headers"]["host"] == f"{HOMESERVER_FQDN}:8448"


def test_homeserver_sends_hsts(client):
    assert client.request(HOMESERVER_FQDN, "/").header("Strict-Transport-Security") == "max-age=63072000"


# --- Element web ------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/index.html", "/config.json", "/version"])
def test_element_files_are_served_with_the_security_headers(client, path):
    response = client.request(ELEMENT_FQDN, path)
    assert response.status == 200
    for name, value in ELEMENT_HEADERS.items():
        assert response.header(name) == value, name
    csp = response.header("Content-Security-Policy")
    assert "default-src 'self'" in csp
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp
    assert "frame-ancestors 'self'" in csp
    # Element's caching requirements: the entry points are never cached.
    assert response.header("Cache-Control") == "no-cache"


def test_element_index_is_the_deployed_release(client):
    body = client.request(ELEMENT_FQDN, "/").body.decode()
    assert "Element web FIXTURE for tests" in body


def test_element_assets_carry_the_security_headers_too(client, host):
    bundle = host.check_output("cd /var/www/element-web/current && ls -d bundles/*/bundle.js")
    response = client.request(ELEMENT_FQDN, "/" + bundle)
    assert response.status == 200
    assert response.header("X-Content-Type-Options") == "nosniff"
    assert "frame-ancestors 'self'" in response.header("Content-Security-Policy")


def test_element_config_points_at_the_homeserver_and_calls_no_third_party(client):
    config = client.request(ELEMENT_FQDN, "/config.json").json()
    assert config["default_server_config"]["m.homeserver"] == {
        "base_url": "https://matrix.example.test",
        "server_name": "example.test",
    }
    assert config["disable_guests"] is True
    assert config["disable_3pid_login"] is True
    assert config["show_labs_settings"] is False
    assert config["integrations_ui_url"] == "" and config["integrations_rest_url"] == ""
    assert config["integrations_widgets_urls"] == []
    assert config["setting_defaults"]["language"] == "fr"
    assert config["setting_defaults"]["UIFeature.widgets"] is False
    assert config["features"]["feature_group_calls"] is False
    for key in ("bug_report_endpoint_url", "posthog", "sentry", "map_style_url", "element_call", "jitsi"):
        assert key not in config, key
    assert "vector.im" not in json.dumps(config) and "element.io" not in json.dumps(config)


def test_element_is_not_served_on_the_homeserver_origin(client):
    assert client.request(HOMESERVER_FQDN, "/index.html").status == 404
