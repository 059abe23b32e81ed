"""Errors for the optional dependencies: a module that needs an extra says
which ``pip install "fastxent[EXTRA]"`` brings it, not only which import
failed."""

from __future__ import annotations


def missing(module: str, needs: str, extra: str, error: ImportError) -> ModuleNotFoundError:
    """The error to raise (``from error``) when ``module`` cannot import what
    it ``needs`` (in words); a ModuleNotFoundError, so that ``except
    ImportError`` still catches it, with the missing module's ``name``."""
    return ModuleNotFoundError(
        f"{module} needs {needs}, which could not be imported ({error}). "
        f'Install the extra: pip install "fastxent[{extra}]"',
        name=error.name,
    )
