#!/usr/bin/env python3
"""Debian package index stanzas, for scripts/bundle.sh: one parser for its three uses.

    debindex.py base      < apt-cache dumpavail   the names of the amd64/all packages of priority
                                                  required or important (the base system), sorted
    debindex.py sort      < Packages              the stanzas sorted by name and version
    debindex.py versions  < Packages              {"name": "version", ...} as JSON
"""
import json
import sys


def stanzas(text):
    """[(fields, stanza text)]: a stanza's top-level fields (continuation lines left out)."""
    result = []
    for stanza in text.split("\n\n"):
        if stanza.strip():
            fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
            result.append((fields, stanza.strip("\n")))
    return result


def main(command):
    parsed = stanzas(sys.stdin.read())
    if command == "base":
        names = {f["Package"] for f, _ in parsed
                 if f.get("Priority") in ("required", "important") and f.get("Architecture") in ("amd64", "all")}
        sys.stdout.write("".join(f"{name}\n" for name in sorted(names)))
    elif command == "sort":
        ordered = sorted(parsed, key=lambda item: (item[0]["Package"], item[0]["Version"]))
        sys.stdout.write("\n\n".join(text for _, text in ordered) + "\n")
    elif command == "versions":
        json.dump({f["Package"]: f["Version"] for f, _ in parsed}, sys.stdout, sort_keys=True)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) == 2 else "")
