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


def write_wandb_standin(path: Path, doc: str, run_name, aliases: str) -> None:
    """An offline ``wandb.py`` beside their scripts (once): ``init`` keeps the parsed arguments
    as ``wandb.config._items``, from which their scripts rebuild them; ``log``, ``finish`` and
    ``Image`` (and ``aliases`` of it, e.g. ``Table``) do nothing. No account, no network."""
    if path.exists():
        return
    path.write_text(
        f'"""{doc}"""\n'
        "import sys\n\n\n"
        "class _Config:\n    def __init__(self, items):\n        self._items = items\n\n\n"
        f"class _Run:\n    name = {run_name!r}\n\n\n"
        "config, run = _Config({}), _Run()\n\n\n"
        "def init(**kwargs):\n"
        "    args = kwargs.get('config')\n"
        "    sys.modules[__name__].config = _Config(dict(vars(args)) if args is not None else {})\n"
        "    return run\n\n\n"
        "def log(*args, **kwargs):\n    pass\n\n\n"
        "def finish(*args, **kwargs):\n    pass\n\n\n"
        "class Image:\n    def __init__(self, *args, **kwargs):\n        pass\n\n\n"
        f"{aliases} = Image\n"
    )
