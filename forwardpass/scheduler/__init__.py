"""Scheduling requests onto a model's sessions: the dynamic batcher."""

from forwardpass.scheduler.batcher import Batched, Batcher, Runner

__all__ = ["Batched", "Batcher", "Runner"]
