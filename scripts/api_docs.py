"""Build the API reference of masterkey (HTML, generated from the docstrings by pdoc); every pdoc warning is an
error, so a docstring or annotation pdoc cannot read fails the build (as CI runs it).

    python scripts/api_docs.py [OUT]        # default build/api; open OUT/masterkey.html
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

#: Modules of the command line, not of the library (``masterkey --help`` documents them).
CLI_MODULES = ("masterkey.cli", "masterkey.__main__", "masterkey.commands")


def module_specs() -> list[str]:
    """pdoc module specifications that reach every library module once (the command line's left out): pdoc walks
    a package into the submodules its ``__all__`` names, so only the modules it would not reach are added."""
    import pkgutil

    from pdoc.extract import walk_specs

    import masterkey

    names = sorted(m.name for m in pkgutil.walk_packages(masterkey.__path__, "masterkey."))
    specs, reached = ["masterkey"], set(walk_specs(["masterkey"]))
    for name in names:
        if name not in reached and not name.startswith(CLI_MODULES):
            specs.append(name)
            reached.update(walk_specs([name]))
    return specs


def _shorten_sphinx_references() -> None:
    """Read Sphinx's ``:class:`~a.b.C``` as ``:class:`a.b.C``` (pdoc links the name, but not with the ``~``)."""
    import re

    import pdoc.docstrings

    rst = pdoc.docstrings.rst
    pdoc.docstrings.rst = lambda text, source_file: rst(re.sub(r"(:\w+:`)~", r"\1", text), source_file)


def build(out: Path) -> Path:
    """Write the reference of every library module to ``out``; returns its start page."""
    import pdoc
    import pdoc.render

    _shorten_sphinx_references()
    warnings.filterwarnings("error", module="pdoc")
    pdoc.render.configure(docformat="restructuredtext", show_source=False, search=True)
    pdoc.pdoc(*module_specs(), output_directory=out)
    return out / "masterkey.html"


if __name__ == "__main__":
    start = build(Path(sys.argv[1] if len(sys.argv) > 1 else "build/api"))
    print(f"API reference: {start}")
