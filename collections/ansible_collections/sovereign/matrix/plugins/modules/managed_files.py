#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: the toolkit's authors. GNU General Public License v3.0+ (see COPYING or
# https://www.gnu.org/licenses/gpl-3.0.txt)
"""Directories and whole files of one role in one module run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: managed_files
short_description: Directories and whole files of a role, in one module run
description:
  - Creates directories and writes whole files (content given by the controller, usually
    rendered with the C(ansible.builtin.template) lookup), with owner, group and mode, in one
    module run instead of one per file. A no-op re-run of a role then costs one round trip to
    the host instead of one or two per file, which is why this module exists (docs/capacity.md,
    section "Fast re-runs").
  - A file whose content changes is written as a candidate beside its destination, checked with
    O(files[].validate) when given, and moved into place atomically. A candidate that fails its
    check is removed and the module fails before any later file is touched.
  - Directories are handled before files, each list in its order.
version_added: "1.0.0"
author: The toolkit's authors
options:
  directories:
    description: Directories to create (with their parents) or whose attributes to set.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      owner:
        description: Owner name.
        type: str
        default: root
      group:
        description: Group name.
        type: str
        default: root
      mode:
        description: Octal mode as a string, for example C(0755).
        type: str
        default: "0755"
      enabled:
        description: V(false) leaves this directory alone (a waived control, an option that is off).
        type: bool
        default: true
  files:
    description: Whole files.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path. Its directory must exist or be in O(directories).
        type: path
        required: true
      content:
        description: The whole content (UTF-8 text).
        type: str
        default: ""
      owner:
        description: Owner name.
        type: str
        default: root
      group:
        description: Group name.
        type: str
        default: root
      mode:
        description: Octal mode as a string.
        type: str
        default: "0644"
      validate:
        description:
          - Command that checks a candidate before it replaces the file, C(%s) being the
            candidate's path. Run only when the content changes.
        type: str
      state:
        description: V(present) writes the file, V(absent) removes it.
        type: str
        choices: [present, absent]
        default: present
      enabled:
        description: V(false) leaves this file alone (a waived control, an option that is off).
        type: bool
        default: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Write the role's configuration
  sovereign.matrix.managed_files:
    directories:
      - {path: /etc/example.d, mode: "0755"}
    files:
      - path: /etc/example.d/main.conf
        content: "{{ lookup('ansible.builtin.template', 'etc/example.d/main.conf.j2') }}"
        mode: "0640"
        validate: /usr/sbin/example --check %s
      - {path: /etc/example.d/old.conf, state: absent}
  register: __example_files

- name: Reload the service when its configuration changed
  ansible.builtin.debug:
    msg: "{{ __example_files.changed_paths }}"
  changed_when: "'/etc/example.d/main.conf' in __example_files.changed_paths"
  notify: Reload example
"""

RETURN = r"""
changed_paths:
  description: The directories and files that were (or in check mode would be) created,
    written, removed or given other attributes, in the order handled.
  type: list
  elements: str
  returned: always
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_native, to_text

_DIR_SPEC = dict(
    path=dict(type="path", required=True),
    owner=dict(type="str", default="root"),
    group=dict(type="str", default="root"),
    mode=dict(type="str", default="0755"),
    enabled=dict(type="bool", default=True),
)
# A file: a directory's options (its own default mode), and its content, check and state.
_FILE_SPEC = dict(
    _DIR_SPEC,
    mode=dict(type="str", default="0644"),
    content=dict(type="str", default=""),
    validate=dict(type="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
)


def _attributes(module, path, item, changed):
    """Owner, group and mode (check mode: only report). True when something differs."""
    changed = module.set_owner_if_different(path, item["owner"], changed)
    changed = module.set_group_if_different(path, item["group"], changed)
    return module.set_mode_if_different(path, item["mode"], changed)


def _directory(module, item):
    path = item["path"]
    if not os.path.isabs(path):
        module.fail_json(msg="directory path must be absolute: %s" % path)
    if os.path.lexists(path) and not os.path.isdir(path):
        module.fail_json(msg="%s exists and is not a directory" % path)
    if not os.path.isdir(path):
        if module.check_mode:
            return True
        os.makedirs(path)
        _attributes(module, path, item, True)
        return True
    return _attributes(module, path, item, False)


def _candidate(module, path, data, item):
    """Write DATA beside PATH, give it its attributes, check it; return its path."""
    fd, candidate = tempfile.mkstemp(
        dir=os.path.dirname(path), prefix="." + os.path.basename(path) + ".",
        suffix=".ansible-candidate~")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _attributes(module, candidate, item, True)
        if item["validate"]:
            if "%s" not in item["validate"]:
                raise ValueError("validate must contain %%s: %s" % item["validate"])
            rc, out, err = module.run_command(item["validate"] % candidate)
            if rc != 0:
                raise RuntimeError("failed to validate %s (rc %d): %s" % (
                    path, rc, (to_native(err) or to_native(out)).strip()))
    except Exception:
        os.unlink(candidate)
        raise
    return candidate


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _file(module, item, diffs):
    path = item["path"]
    if not os.path.isabs(path):
        module.fail_json(msg="file path must be absolute: %s" % path)
    exists = os.path.lexists(path)
    if item["state"] == "absent":
        # A file or a symbolic link (Debian's sites-enabled/default), never a directory.
        if not exists:
            return False
        if os.path.isdir(path) and not os.path.islink(path):
            module.fail_json(msg="%s is a directory: not removed" % path)
        if module._diff:
            before = ("symbolic link to %s\n" % os.readlink(path) if os.path.islink(path)
                      else to_text(_read(path), errors="surrogate_or_strict"))
            diffs.append(dict(before_header=path, after_header=path, before=before, after=""))
        if not module.check_mode:
            os.unlink(path)
        return True

    if exists and (os.path.islink(path) or not os.path.isfile(path)):
        module.fail_json(msg="%s exists and is not a regular file" % path)
    before = _read(path) if exists else b""

    data = to_bytes(item["content"], errors="surrogate_or_strict")
    if exists and before == data:
        return _attributes(module, path, item, False)
    if module._diff:
        diffs.append(dict(before_header=path if exists else "/dev/null", after_header=path,
                          before=to_text(before, errors="surrogate_or_strict"),
                          after=item["content"]))
    if module.check_mode:
        return True
    if not os.path.isdir(os.path.dirname(path)):
        module.fail_json(msg="the directory of %s does not exist" % path)
    candidate = _candidate(module, path, data, item)
    module.atomic_move(candidate, path)
    _attributes(module, path, item, True)
    return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            directories=dict(type="list", elements="dict", options=_DIR_SPEC, default=[]),
            files=dict(type="list", elements="dict", options=_FILE_SPEC, default=[]),
        ),
        supports_check_mode=True,
    )
    changed_paths, diffs = [], []
    try:
        for item in module.params["directories"]:
            if item["enabled"] and _directory(module, item):
                changed_paths.append(item["path"])
        for item in module.params["files"]:
            if item["enabled"] and _file(module, item, diffs):
                changed_paths.append(item["path"])
    except (OSError, ValueError, RuntimeError) as exc:
        module.fail_json(msg=to_native(exc), changed_paths=changed_paths)
    result = dict(changed=bool(changed_paths), changed_paths=changed_paths)
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
