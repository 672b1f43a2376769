"""docs/hardening.md and the hardening role's control list (roles/hardening/vars/controls.yml) agree."""
import re

import yaml

from conftest import REPO, run

CONTROLS = REPO / "roles" / "hardening" / "vars" / "controls.yml"
PAGE = REPO / "docs" / "hardening.md"


def _controls():
    return yaml.safe_load(CONTROLS.read_text())["__hardening_controls"]


def test_the_control_table_is_generated_from_the_controls_file():
    result = run(["python", "scripts/hardening-docs.py", "--check"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_control_of_the_page_exists_and_every_control_is_on_the_page():
    on_page = set(re.findall(r"^\| `(HARD-[A-Z]+-[0-9]{2})` \|", PAGE.read_text(), re.M))
    assert on_page == {control["id"] for control in _controls()}


def test_every_control_has_a_unique_stable_id_a_rationale_and_a_reference():
    controls = _controls()
    ids = [control["id"] for control in controls]
    assert len(ids) == len(set(ids))
    for control in controls:
        assert re.fullmatch(r"HARD-[A-Z]+-[0-9]{2}", control["id"]), control["id"]
        assert control["title"].strip() and control["rationale"].strip(), control["id"]
        assert re.search(r"ANSSI|CIS", control["reference"]), control["id"]
        assert isinstance(control["kernel"], bool), control["id"]
        assert control["check"], f"{control['id']} has nothing to check"
