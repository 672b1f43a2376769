"""sovereign.matrix.managed_files, the module that writes a role's directories and whole files in
one module run (collections/ansible_collections/sovereign/matrix): what the template and file
modules it replaces guaranteed, it guarantees too. Runs against this machine (connection local)
inside a temporary folder."""
import json
import os
import stat
import sys

import pytest

from conftest import run

# This interpreter (the virtualenv's), not whatever "python3" comes first in PATH.
LOCAL = ["-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}"]

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Manage the files
      sovereign.matrix.managed_files:
        directories: {directories}
        files: {files}
      register: result
    - name: Show the result
      ansible.builtin.copy:
        content: "{{{{ result | to_json }}}}"
        dest: {out}
      check_mode: false
      diff: false
"""


def apply(tmp_path, directories=(), files=(), *extra):
    """Run the module once; return (CompletedProcess, its registered result or None)."""
    out = tmp_path / "result.json"
    if out.exists():
        out.unlink()
    play = tmp_path / "play.yml"
    play.write_text(PLAY.format(directories=json.dumps(list(directories)),
                                files=json.dumps(list(files)), out=out))
    proc = run(["ansible-playbook", *LOCAL, str(play), *extra],
               env={"ANSIBLE_CONFIG": "ansible.cfg"})
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_then_changes_nothing_the_second_time(tmp_path):
    d = tmp_path / "etc" / "conf.d"
    files = [{"path": str(d / "a.conf"), "content": "one\n", "mode": "0640"},
             {"path": str(d / "b.conf"), "content": "two", "owner": "nobody", "group": "nogroup"}]
    proc, result = apply(tmp_path, [{"path": str(d), "mode": "0750"}], files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["changed_paths"] == [str(d), str(d / "a.conf"), str(d / "b.conf")]
    assert (d / "a.conf").read_bytes() == b"one\n" and mode(d / "a.conf") == 0o640
    assert (d / "b.conf").owner() == "nobody" and (d / "b.conf").group() == "nogroup"
    assert mode(d) == 0o750
    proc, result = apply(tmp_path, [{"path": str(d), "mode": "0750"}], files)
    assert proc.returncode == 0 and result["changed"] is False and result["changed_paths"] == []


def test_puts_back_content_and_attributes_changed_by_hand(tmp_path):
    f = tmp_path / "x.conf"
    files = [{"path": str(f), "content": "managed\n", "mode": "0600"}]
    apply(tmp_path, files=files)
    f.write_text("edited by hand\n")
    proc, result = apply(tmp_path, files=files)
    assert result["changed_paths"] == [str(f)] and f.read_text() == "managed\n"
    f.chmod(0o666)
    proc, result = apply(tmp_path, files=files)
    assert result["changed_paths"] == [str(f)] and mode(f) == 0o600


def test_check_mode_reports_and_changes_nothing(tmp_path):
    d, f = tmp_path / "new.d", tmp_path / "old.conf"
    f.write_text("before\n")
    proc, result = apply(tmp_path, [{"path": str(d)}],
                         [{"path": str(d / "n.conf"), "content": "n\n"},
                          {"path": str(f), "content": "after\n"}], "--check", "--diff")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["changed_paths"] == [str(d), str(d / "n.conf"), str(f)]
    assert not d.exists() and f.read_text() == "before\n"
    assert "-before" in proc.stdout and "+after" in proc.stdout


def test_a_candidate_that_fails_its_check_never_goes_live(tmp_path):
    f, g = tmp_path / "live.conf", tmp_path / "later.conf"
    f.write_text("good\n")
    proc, result = apply(tmp_path, files=[
        {"path": str(f), "content": "bad\n", "validate": "/bin/grep -q good %s"},
        {"path": str(g), "content": "never written\n"}])
    assert proc.returncode != 0
    assert "failed to validate" in proc.stdout
    assert f.read_text() == "good\n" and not g.exists()
    assert [p.name for p in tmp_path.iterdir() if "candidate" in p.name] == []
    proc, result = apply(tmp_path, files=[
        {"path": str(f), "content": "good too\n", "validate": "/bin/grep -q good %s"}])
    assert proc.returncode == 0 and f.read_text() == "good too\n"


def test_absent_removes_files_and_links_and_disabled_entries_are_left_alone(tmp_path):
    """As Debian's nginx package ships sites-enabled/default: a link to sites-available."""
    old, kept, link = tmp_path / "old.conf", tmp_path / "waived.conf", tmp_path / "enabled-site"
    old.write_text("x")
    kept.write_text("operator's own\n")
    link.symlink_to(kept)
    proc, result = apply(tmp_path, files=[
        {"path": str(old), "state": "absent"},
        {"path": str(link), "state": "absent"},
        {"path": str(kept), "content": "ours\n", "enabled": False}])
    assert proc.returncode == 0, proc.stdout
    assert result["changed_paths"] == [str(old), str(link)]
    assert not old.exists() and not link.is_symlink() and kept.read_text() == "operator's own\n"
    proc, result = apply(tmp_path, files=[{"path": str(tmp_path), "state": "absent"}])
    assert proc.returncode != 0 and "is a directory: not removed" in proc.stdout and tmp_path.is_dir()


@pytest.mark.parametrize("template", [
    "{{ ansible_managed | comment }}\n{% for i in [1, 2] %}\nline {{ i }}\n{% endfor %}\nend\n\n",
    "{%- if true %}\n  indented: {{ 'x' }}\n{%- endif %}\nno final newline",
    "key = {{ {'a': [1, 2]} | to_json }}\n",
])
def test_the_template_lookup_renders_what_the_template_module_wrote(tmp_path, template):
    """The roles give the module lookup('ansible.builtin.template', ...): on a host the template
    module converged, a re-run must find the same bytes (no change)."""
    (tmp_path / "t.j2").write_text(template)
    play = tmp_path / "render.yml"
    play.write_text(f"""
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Render with the module
      ansible.builtin.template:
        src: {tmp_path}/t.j2
        dest: {tmp_path}/by-module
        mode: "0644"
    - name: Write the lookup
      sovereign.matrix.managed_files:
        files:
          - path: {tmp_path}/by-module
            content: "{{{{ lookup('ansible.builtin.template', '{tmp_path}/t.j2') }}}}"
      register: again
    - name: Nothing differs
      ansible.builtin.assert:
        that: again is not changed
""")
    proc = run(["ansible-playbook", *LOCAL, str(play)],
               env={"ANSIBLE_CONFIG": "ansible.cfg"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
