"""Every exception p2pgrid defines derives from the one root, ``P2PGridError``.

Walks every module of the package (test tooling included) and checks each
Exception subclass defined there, so a new ``class X(Exception)`` cannot slip in.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import p2pgrid
from p2pgrid.errors import P2PGridError

#: Modules run as programs only (importing them runs them).
PROGRAMS = {"__main__"}


def test_every_exception_in_the_package_derives_from_the_root() -> None:
    defined: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(p2pgrid.__path__, prefix="p2pgrid."):
        if info.name.rsplit(".", 1)[-1] in PROGRAMS:
            continue
        module = importlib.import_module(info.name)
        defined += [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, BaseException)
            and obj.__module__ == module.__name__
        ]
    assert len(defined) > 20  # the walk really found the package's errors
    strays = sorted(
        f"{e.__module__}.{e.__qualname__}" for e in defined if not issubclass(e, P2PGridError)
    )
    assert not strays, f"exceptions outside P2PGridError: {strays}"
