"""The registry's errors: one base class, so that callers (the CLI) can tell a refusal from a crash.

Errors that are the caller's input (a bad name, an unknown version) are also ``ValueError``: the CLI maps
those to exit 2; refusals (a lost race, a failed gate, a hash mismatch, a tampered ledger) exit 1.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Something in the registry is not as expected; the message names what was expected and found."""


class InvalidInputError(RegistryError, ValueError):
    """A model name, reference or file given to the registry is not acceptable."""


class NotFoundError(RegistryError, ValueError):
    """A registered model, version or alias does not exist."""


class ConcurrencyError(RegistryError):
    """A registration's parent is no longer the newest version: someone registered in between."""


class IntegrityError(RegistryError):
    """Stored weights do not hash to the SHA-256 recorded when they were registered."""


class PromotionError(RegistryError):
    """A version may not become champion (its gate failed)."""


class LedgerError(RegistryError):
    """The ledger cannot be read or appended to (a torn line, a broken hash chain)."""
