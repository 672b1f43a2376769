"""Fixtures of the role-proxy scenario: a TLS client on the controller.

The tests reach nginx from the controller over the Docker network, as a
browser or another Matrix server would: to the container's address, with the
public name as SNI and Host, trusting only the scenario's staging CA (never
without verification).
"""
import http.client
import json
import os
import pathlib
import socket
import ssl

import pytest

SERVER_NAME = "example.test"
HOMESERVER_FQDN = "matrix.example.test"
ELEMENT_FQDN = "element.example.test"
CA_FILE = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ca" / "ca.crt"


def tls_context(minimum=ssl.TLSVersion.TLSv1_2, maximum=ssl.TLSVersion.MAXIMUM_SUPPORTED):
    context = ssl.create_default_context(cafile=str(CA_FILE))
    context.minimum_version = minimum
    context.maximum_version = maximum
    return context


class _Connection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with the public name as SNI, Host and the
    name checked in the certificate."""

    def __init__(self, address, name, port, context):
        super().__init__(name, port, context=context, timeout=15)
        self._address = address

    def connect(self):
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


class Response:
    def __init__(self, response):
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    def header(self, name):
        return self.headers.get(name)

    def json(self):
        return json.loads(self.body)

    def is_from_upstream(self):
        try:
            return self.json().get("fake_upstream") is True
        except ValueError:
            return False


class Client:
    def __init__(self, address):
        self.address = address

    def request(self, name, path, method="GET", port=443, body=None, headers=None, context=None):
        connection = _Connection(self.address, name, port, context or tls_context())
        try:
            connection.request(method, path, body=body, headers=headers or {})
            return Response(connection.getresponse())
        finally:
            connection.close()

    def handshake(self, name, port=443, context=None):
        """Complete a TLS handshake and return the negotiated version."""
        with socket.create_connection((self.address, port), timeout=15) as raw:
            with (context or tls_context()).wrap_socket(raw, server_hostname=name) as tls:
                return tls.version()

    def plain_http(self, host_header, path="/"):
        connection = http.client.HTTPConnection(self.address, 80, timeout=15)
        try:
            connection.request("GET", path, headers={"Host": host_header})
            return Response(connection.getresponse())
        finally:
            connection.close()

    def raw_https(self, name, request_bytes, port=443):
        """Send raw bytes over TLS (for requests http.client would not send
        as written) and return the status line."""
        with socket.create_connection((self.address, port), timeout=15) as raw:
            with tls_context().wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(request_bytes)
                data = b""
                while b"\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                return data.split(b"\r\n", 1)[0].decode()


@pytest.fixture(scope="module")
def client(host):
    address = host.check_output("hostname -I").split()[0]
    return Client(address)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed test, attach nginx's state and the end of the journal."""
    outcome = yield
    report = outcome.get_result()
    host = item.funcargs.get("host") if hasattr(item, "funcargs") else None
    if report.when != "call" or not report.failed or host is None:
        return
    report.sections.append(("nginx -t", host.run("nginx -t 2>&1").stdout))
    report.sections.append(("nginx error log", host.run("tail -n 40 /var/log/nginx/error.log").stdout))
    report.sections.append(("journal (last 60 lines)", host.run("journalctl --boot --no-pager --lines=60").stdout))
