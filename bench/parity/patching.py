"""The one edit the parity setup scripts apply to the authors' code: replace a text once (a
marker in the file says the edit is there), or stop with the file and the text. ``unique``: the
text must occur exactly once; otherwise every occurrence is replaced (DC's main.py and
main_DM.py repeat some lines)."""

import sys
from pathlib import Path


def make_edit(off: Path, unique: bool = True):
    def edit(path, old, new, marker):
        p = off / path
        s = p.read_text()
        if marker in s:
            return
        if s.count(old) != 1 if unique else s.count(old) < 1:
            sys.exit(f"{p}: the text to patch is missing or not unique: {old!r}")
        p.write_text(s.replace(old, new))

    return edit
