"""Backends run the forward pass. Each gives a `Session`; nothing else in forwardpass knows an engine's API."""

from __future__ import annotations

from forwardpass.backends.base import Session

__all__ = ["Session"]
