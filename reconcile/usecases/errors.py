"""Requests a use case cannot carry out (as opposed to business outcomes, which are values)."""

from __future__ import annotations


class UseCaseError(Exception):
    """Base of the errors the use cases raise on purpose."""


class NotFound(UseCaseError, LookupError):
    """The run, ticket or event asked for does not exist."""


class BadRequest(UseCaseError, ValueError):
    """The request itself is wrong (a window that ends before it starts, a missing note...)."""
