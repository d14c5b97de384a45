"""Kernel-module selection for the test guest's initramfs (pure functions over modules.dep)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping


class ModuleError(Exception):
    """A required module is neither built in nor listed in modules.dep, or deps loop."""


def module_name(path: str) -> str:
    """Return the module name of a module file path (`kernel/fs/isofs/isofs.ko` -> `isofs`).

    Dashes are normalised to underscores, as the kernel and modprobe do.
    """
    base = posixpath.basename(path)
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """Parse a modules.dep text into {module path: [dependency paths]}.

    Blank lines and `#` comments are ignored; paths are kept exactly as written
    (relative to /lib/modules/<version>/). Raises ValueError on a line without `:`.
    """
    deps: dict[str, list[str]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, rest = line.partition(":")
        if not sep:
            raise ValueError(f"modules.dep line {lineno}: no ':' in {raw!r}")
        deps[path.strip()] = rest.split()
    return deps


def parse_modules_builtin(text: str) -> set[str]:
    """Return the names of the modules listed in a modules.builtin text."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def load_order(
    deps: Mapping[str, list[str]],
    required: Iterable[str],
    optional: Iterable[str] = (),
    builtin: Iterable[str] = (),
) -> list[str]:
    """Return the module paths to load, each after everything it depends on.

    `required` and `optional` are module names. A name that is built in is
    skipped; an optional name found nowhere is skipped; a required name found
    nowhere raises ModuleError, as does a dependency loop. The order is
    deterministic: modules in the order asked, each preceded by its dependencies
    (depth first, in modules.dep order), every path at most once.
    """
    by_name = {module_name(path): path for path in deps}
    builtin_names = {n.replace("-", "_") for n in builtin}
    order: list[str] = []
    done: set[str] = set()

    def visit(path: str, stack: tuple[str, ...]) -> None:
        if path in done:
            return
        if path in stack:
            raise ModuleError("dependency loop: " + " -> ".join((*stack, path)))
        for dep in deps.get(path, []):
            visit(dep, (*stack, path))
        done.add(path)
        order.append(path)

    for names, must in ((list(required), True), (list(optional), False)):
        for raw in names:
            name = raw.replace("-", "_")
            if name in builtin_names:
                continue
            if name in by_name:
                visit(by_name[name], ())
            elif must:
                raise ModuleError(f"module {raw!r} is neither built in nor in modules.dep")
    return order
