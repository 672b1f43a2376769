#!/usr/bin/python3
"""GET https://NAME/PATH... from the proxy host itself: to 127.0.0.1:443 with NAME as the TLS
server name (SNI) and Host, as a browser reaching NAME would send them. Prints one JSON object,
{path: {"status": int, "body": str}} (bodies cut at 64 KiB). The certificate is not verified:
this checks what nginx serves; the TLS set-up is checked by the tests and the audit."""
import http.client
import json
import ssl
import sys

name, paths = sys.argv[1], sys.argv[2:]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
answers = {}
for path in paths:
    connection = http.client.HTTPSConnection("127.0.0.1", 443, timeout=10, context=context)
    connection.sock = context.wrap_socket(
        __import__("socket").create_connection(("127.0.0.1", 443), timeout=10), server_hostname=name)
    connection.request("GET", path, headers={"Host": name})
    response = connection.getresponse()
    answers[path] = {"status": response.status, "body": response.read(65536).decode("utf-8", "replace")}
    connection.close()
print(json.dumps(answers))
