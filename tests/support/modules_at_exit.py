"""`manage.py ARGS` in this interpreter; at exit, the names of the modules it imported.

    python tests/support/modules_at_exit.py OUT runsyncer [...]

Runs `manage.py` as its own `__main__` (so `runsyncer` sees the argv it always sees) and
writes the names of the modules imported, one a line, to OUT when the process exits,
whatever the command's outcome: what a real worker loaded, for the tests of its footprint.
Beside it, OUT.gc.json holds the garbage collector's frozen objects and thresholds then.
"""

from __future__ import annotations

import atexit
import gc
import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported() -> list[str]:
    """The modules imported, in order of name; not those declined (None in sys.modules)."""
    return sorted(name for name, module in sys.modules.items() if module is not None)


def collector() -> dict[str, object]:
    return {"frozen": gc.get_freeze_count(), "threshold": list(gc.get_threshold())}


def main() -> None:
    out = Path(sys.argv[1])
    atexit.register(lambda: out.write_text("".join(f"{name}\n" for name in imported())))
    gc_out = out.with_name(out.name + ".gc.json")
    atexit.register(lambda: gc_out.write_text(json.dumps(collector())))
    sys.argv = [str(ROOT / "manage.py"), *sys.argv[2:]]
    sys.path[0] = str(ROOT)  # the checkout, not this folder, as manage.py would have it
    runpy.run_path(str(ROOT / "manage.py"), run_name="__main__")


if __name__ == "__main__":
    main()
