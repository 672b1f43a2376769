"""Operator settings: the allow-list of names, generated at run time.

Ansible loads this file for every playbook in playbooks/ (a playbook's own
filter_plugins/ folder, also when the playbook is imported, and whatever
ansible.cfg Molecule writes). playbooks/preflight.yml calls it before any host
is contacted.

Known names are read from the files that define them, never kept by hand:
- every option of every entry point of roles/*/meta/argument_specs.yml;
- the operator settings' own spec, playbooks/vars/matrix_argument_specs.yml;
- the top-level names of the shared wiring, group_vars/all/*.yml.
A setting prefix is ``matrix_`` or ``<role>_`` for each directory in roles/.
"""
from __future__ import annotations

import difflib
import pathlib
import re

import yaml
from ansible.errors import AnsibleFilterError

REPO = pathlib.Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
WIRING = REPO / "group_vars" / "all"
MATRIX_SPEC = REPO / "playbooks" / "vars" / "matrix_argument_specs.yml"

# Names that other tools set (connection and Molecule variables), internal
# names (__role_...) and private ones: never operator settings.
_NOT_SETTINGS = re.compile(r"^(_|ansible_|molecule_)")
# A name without a known prefix is still refused when it is this close to a
# known setting (synpase_enable_registration): a misspelt prefix.
_NEAR_MISS = 0.9

_cache: dict = {}


class _Loader(yaml.SafeLoader):
    """Reads names only: tagged values (!vault, !unsafe) load as None."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _load(path):
    try:
        return yaml.load(path.read_text(), Loader=_Loader) or {}
    except (OSError, yaml.YAMLError) as error:
        raise AnsibleFilterError(f"matrix_settings: cannot read {path}: {error}") from error


def _stamp():
    files = [MATRIX_SPEC, *sorted(ROLES.glob("*/meta/argument_specs.yml")), *sorted(WIRING.glob("*.yml"))]
    dirs = sorted(p for p in ROLES.iterdir() if p.is_dir())
    return tuple((str(f), f.stat().st_mtime_ns) for f in files if f.exists()) + tuple(str(d) for d in dirs)


def _catalogue():
    """{'prefixes': {prefix: source}, 'known': {name: source}}, cached on the files' mtimes."""
    stamp = _stamp()
    if _cache.get("stamp") == stamp:
        return _cache["catalogue"]
    prefixes = {"matrix": "docs/architecture.md"}
    known = {}
    for role in sorted(p for p in ROLES.iterdir() if p.is_dir()):
        prefixes[role.name] = f"roles/{role.name}/README.md"
        spec_file = role / "meta" / "argument_specs.yml"
        if spec_file.exists():
            for entry in (_load(spec_file).get("argument_specs") or {}).values():
                for name in (entry or {}).get("options") or {}:
                    known[name] = f"roles/{role.name}/meta/argument_specs.yml"
    if MATRIX_SPEC.exists():
        for entry in (_load(MATRIX_SPEC).get("argument_specs") or {}).values():
            for name in (entry or {}).get("options") or {}:
                known[name] = "playbooks/vars/matrix_argument_specs.yml"
    for wiring in sorted(WIRING.glob("*.yml")):
        for name in _load(wiring):
            known.setdefault(name, f"group_vars/all/{wiring.name}")
    catalogue = {"prefixes": prefixes, "known": known}
    _cache.update(stamp=stamp, catalogue=catalogue)
    return catalogue


# Settings that were removed, with what replaces them: refused with that reason, not as unknown.
_RETIRED = {
    "synapse_pip_extra_index_urls": (
        "removed: Synapse installs from one package index (synapse_pip_index_url), in hash-checking mode "
        "from its lock file; an extra index invites dependency confusion (roles/synapse/README.md)"
    ),
    "synapse_pip_extra_packages": (
        "removed: extra Python packages (Synapse modules) are locked with Synapse into a file named by "
        "synapse_pip_requirements (scripts/lock-synapse.sh, roles/synapse/README.md)"
    ),
}


def _prefix_of(name, prefixes):
    """The longest known prefix of name (element_web before element), or None."""
    matches = [p for p in prefixes if name.startswith(p + "_")]
    return max(matches, key=len) if matches else None


def matrix_unknown_settings(names):
    """Messages for the names that look like settings but are none.

    A name with a setting prefix (matrix_, synapse_, ...) that no spec and no
    wiring file defines is refused, naming the closest valid name; so is a name
    without a known prefix that is very close to a valid one.
    """
    catalogue = _catalogue()
    known, prefixes = catalogue["known"], catalogue["prefixes"]
    messages = []
    for name in sorted(set(names)):
        if name in _RETIRED:
            messages.append(f"{name}: {_RETIRED[name]}")
            continue
        if not isinstance(name, str) or name in known or _NOT_SETTINGS.match(name):
            continue
        prefix = _prefix_of(name, prefixes)
        if prefix is None:
            close = difflib.get_close_matches(name, known, n=1, cutoff=_NEAR_MISS)
            if close:
                messages.append(f"{name}: unknown setting; did you mean {close[0]}?")
            continue
        same_prefix = [k for k in known if _prefix_of(k, prefixes) == prefix]
        close = difflib.get_close_matches(name, same_prefix, n=1, cutoff=0.8) or difflib.get_close_matches(
            name, known, n=1, cutoff=0.85
        )
        if close:
            messages.append(f"{name}: unknown setting; did you mean {close[0]}?")
        else:
            messages.append(f"{name}: unknown setting (no {prefix}_ setting is close; see {prefixes[prefix]})")
    return messages


def matrix_known_settings(_ignored=None):
    """Every valid setting name, sorted (for docs and debugging)."""
    return sorted(_catalogue()["known"])


def matrix_roles_with_tasks(tasks_file):
    """Names of the roles that ship tasks/<tasks_file>.yml (e.g. 'preflight')."""
    return sorted(p.parent.parent.name for p in ROLES.glob(f"*/tasks/{tasks_file}.yml"))


class FilterModule:
    def filters(self):
        return {
            "matrix_unknown_settings": matrix_unknown_settings,
            "matrix_known_settings": matrix_known_settings,
            "matrix_roles_with_tasks": matrix_roles_with_tasks,
        }
