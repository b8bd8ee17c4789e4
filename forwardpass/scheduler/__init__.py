"""Scheduling requests onto a model's sessions: `batcher` (the dynamic batcher), `sequence` (the sequence batcher
for stateful models) and `batches` (what every batching loop shares). Import the submodule you need: the batchers
import asyncio, which `forwardpass.model` (using `batches`) must not pay for at `import forwardpass`."""
