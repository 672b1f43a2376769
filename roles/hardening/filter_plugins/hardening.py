"""Filters of the hardening role."""
import difflib


def hardening_closest(value, choices):
    """The choice closest to value (for "did you mean" messages), or '' when none is close."""
    matches = difflib.get_close_matches(str(value).upper(), [str(c) for c in choices], n=1, cutoff=0.4)
    return matches[0] if matches else ""


class FilterModule:
    def filters(self):
        return {"hardening_closest": hardening_closest}
