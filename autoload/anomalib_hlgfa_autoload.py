"""Register HLGFA with anomalib as soon as anomalib's model registry is imported.

anomalib finds models among the loaded subclasses of ``AnomalibModule``; it has no plugin entry
points. The installed ``anomalib_hlgfa_autoload.pth`` imports this module at interpreter start-up.
It imports nothing heavy itself: it only watches for ``anomalib.models`` and, right after that
module has loaded, imports ``anomalib_hlgfa``. So ``anomalib train --model Hlgfa`` works with no
extra flag, and a process that never imports anomalib pays for nothing (no torch import).

Set ``ANOMALIB_HLGFA_AUTOLOAD=0`` to switch this off.
"""

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

_WATCHED = "anomalib.models"


class _RegisterAfterLoad(importlib.abc.Loader):
    """Run the real loader of ``anomalib.models``, then import ``anomalib_hlgfa``."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            importlib.import_module("anomalib_hlgfa")
        except Exception as error:  # a broken plugin must not break anomalib itself
            warnings.warn(
                f"anomalib_hlgfa is installed but could not be imported, so the Hlgfa model is not "
                f"available: {error!r}. Reinstall it, or set ANOMALIB_HLGFA_AUTOLOAD=0 to silence this.",
                stacklevel=2,
            )


class _AnomalibModelsFinder(importlib.abc.MetaPathFinder):
    """Find ``anomalib.models`` as usual, with a loader that registers HLGFA after it."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _WATCHED:
            return None
        # Step aside for the real lookup, then take the first spec found after this finder.
        index = sys.meta_path.index(self)
        for finder in sys.meta_path[index + 1 :]:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisterAfterLoad(spec.loader)
                sys.meta_path.remove(self)  # one registration per process is all that is needed
                return spec
        return None


def install() -> None:
    """Install the finder once, unless switched off."""
    if os.environ.get("ANOMALIB_HLGFA_AUTOLOAD", "1") == "0":
        return
    if not any(isinstance(finder, _AnomalibModelsFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AnomalibModelsFinder())


install()
