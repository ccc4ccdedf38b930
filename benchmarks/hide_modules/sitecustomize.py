"""Hide packages from Python, to rehearse a machine that lacks them: DLKIT_HIDE_MODULES=a,b.

With this folder first on PYTHONPATH, importing `a` or `a.anything` raises ModuleNotFoundError
as if it were not installed. benchmarks/gpu_check.sh uses it in its CPU dry run, so that
tritonclient and torchao are missing there as they are on the GPU machine.
"""

import os
import sys
from importlib.abc import MetaPathFinder

HIDDEN = {name.strip() for name in os.environ.get("DLKIT_HIDE_MODULES", "").split(",")} - {""}


class HiddenModules(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (DLKIT_HIDE_MODULES)", name=name)
        return None


if HIDDEN:
    sys.meta_path.insert(0, HiddenModules())
