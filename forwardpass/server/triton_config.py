"""What `/v2/models/<model>/config` answers: Triton's ModelConfig of a served model, in its JSON form (stock Triton
clients and tools read it)."""

from __future__ import annotations

from typing import Any

from forwardpass.config import LatestVersions, SpecificVersions
from forwardpass.registry import Served
from forwardpass.tensor import DataType, TensorSpec

__all__ = ["PLATFORM", "triton_config"]

PLATFORM = "onnxruntime_onnx"
_TRITON_TYPE = {dtype: "TYPE_STRING" if dtype is DataType.BYTES else f"TYPE_{dtype.name}" for dtype in DataType}


def triton_config(served: Served) -> dict[str, Any]:
    """Triton's ModelConfig in its JSON form; with batching on, dims leave out the batch dimension."""
    config = served.model.config
    batched = served.max_batch_size > 0
    result: dict[str, Any] = {
        "name": served.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": _version_policy(config.version_policy),
        "max_batch_size": served.max_batch_size,
        "input": [_tensor_config(spec, batched) for spec in served.inputs],
        "output": [_tensor_config(spec, batched) for spec in served.outputs],
        "instance_group": [{"name": served.name, "kind": "KIND_CPU", "count": len(served.sessions)}],
        "default_model_filename": served.model.entry.artefact.name,
    }
    if batched:
        batching = config.dynamic_batching
        result["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_size),
            "max_queue_delay_microseconds": batching.max_queue_delay_us,
            "default_queue_policy": {"max_queue_size": batching.max_queue_size},
        }
    if config.sequence_batching is not None:
        specs = {spec.name: spec for spec in served.model.inputs}
        result["sequence_batching"] = {
            "max_sequence_idle_microseconds": round(config.sequence_batching.idle_timeout_s * 1e6),
            "state": [
                {
                    "input_name": state.input,
                    "output_name": state.output,
                    "data_type": _TRITON_TYPE[specs[state.input].dtype],
                    "dims": list(specs[state.input].shape),
                }
                for state in config.sequence_batching.state
            ],
        }
    return result


def _version_policy(policy: object) -> dict[str, Any]:
    if isinstance(policy, LatestVersions):
        return {"latest": {"num_versions": policy.latest}}
    if isinstance(policy, SpecificVersions):
        return {"specific": {"versions": policy.specific}}
    return {"all": {}}


def _tensor_config(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = list(spec.shape[1:] if batched else spec.shape)
    return {"name": spec.name, "data_type": _TRITON_TYPE[spec.dtype], "dims": dims}
