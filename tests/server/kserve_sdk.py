"""The KServe Python SDK (kserve 0.21) as a KServe user drives it, run in its own virtualenv (it pins protobuf 6 and
pandas 2, the project protobuf 7 and pandas 3): `python kserve_sdk.py < plan.json` prints one JSON line of answers.

The plan names the server (`rest`, `grpc`: addresses) and the `calls`, each `{"call": "infer" | "server_ready" |
"server_live" | "model_ready", "transport": "rest" | "grpc" | "v1", ...}`; over KServe's V1 protocol only
"server_live", "model_ready" and "infer" with `instances`. An infer call carries `model`, `inputs` (name,
datatype, shape, data as nested lists, `binary`: sent as binary tensor data), optional `outputs` (name, `binary`,
`parameters`), `parameters`, `binary_output` (the request's binary_data_output), `id` and `version`. Its answer
is `{"id", "model_version", "parameters", "outputs": {name: {"datatype", "shape", "data"}}}`, BYTES elements as
base64 text; a refusal is `{"error": message, "status": HTTP status or gRPC code name}`."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import Any

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

NUMPY = {"BOOL": np.bool_, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8}
NUMPY |= {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}


def request_of(call: dict[str, Any]) -> InferRequest:
    inputs = []
    for spec in call["inputs"]:
        tensor = InferInput(spec["name"], spec["shape"], spec["datatype"])
        data = spec["data"]
        if spec["datatype"] == "BYTES":
            data = [[value.encode() for value in row] for row in data]
        tensor.set_data_from_numpy(np.array(data, dtype=NUMPY[spec["datatype"]]), binary_data=spec["binary"])
        inputs.append(tensor)
    outputs = None
    if call.get("outputs") is not None:
        outputs = [
            RequestedOutput(each["name"], {"binary_data": each["binary"], **each.get("parameters", {})})
            for each in call["outputs"]
        ]
    parameters = dict(call.get("parameters") or {})
    if call.get("binary_output"):
        parameters["binary_data_output"] = True
    return InferRequest(
        model_name=call["model"],
        infer_inputs=inputs,
        request_id=call.get("id"),
        parameters=parameters or None,
        request_outputs=outputs,
        model_version=call.get("version"),
    )


def answer_of(response: Any) -> dict[str, Any]:
    outputs = {}
    for output in response.outputs:
        array = output.as_numpy()
        if output.datatype == "BYTES":
            # a JSON answer's elements come as str, a binary one's as bytes
            elements = [value.encode() if isinstance(value, str) else value for value in array.ravel().tolist()]
            data: Any = [base64.b64encode(value).decode() for value in elements]
        else:
            data = array.ravel().tolist()
        outputs[output.name] = {"datatype": output.datatype, "shape": list(array.shape), "data": data}
    return {
        "id": response.id,
        "model_version": response.model_version,
        "parameters": {key: str(value) for key, value in (response.parameters or {}).items()},
        "outputs": outputs,
    }


async def run(plan: dict[str, Any]) -> list[Any]:
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
    remote = InferenceGRPCClient(plan["grpc"], timeout=30)
    base = f"http://{plan['rest']}"
    answers: list[Any] = []
    try:
        for call in plan["calls"]:
            try:
                answers.append(await one(call, rest, v1, remote, base))
            except httpx.HTTPStatusError as error:
                answers.append({"error": str(error), "status": error.response.status_code})
            except grpc.RpcError as error:
                answers.append({"error": error.details(), "status": error.code().name})
    finally:
        await rest.close()
        await v1.close()
        await remote.close()
    return answers


async def one(
    call: dict[str, Any], rest: InferenceRESTClient, v1: InferenceRESTClient, remote: InferenceGRPCClient, base: str
) -> Any:
    if call["transport"] == "v1":  # KServe's V1 protocol, REST only: {"instances": ...} in, {"predictions": ...} out
        if call["call"] == "model_ready":
            return await v1.is_model_ready(base, call["model"])
        if call["call"] == "server_live":
            try:
                return await v1.is_server_live(base)
            except ValueError as error:  # the answer was not JSON
                return {"error": str(error), "status": "not JSON"}
        return await v1.infer(base, {"instances": call["instances"]}, model_name=call["model"])
    grpc_call = call["transport"] == "grpc"
    if call["call"] == "server_ready":
        return await (remote.is_server_ready() if grpc_call else rest.is_server_ready(base))
    if call["call"] == "server_live":
        return await (remote.is_server_live() if grpc_call else rest.is_server_live(base))
    if call["call"] == "model_ready":
        if grpc_call:
            return await remote.is_model_ready(call["model"])
        return await rest.is_model_ready(base, call["model"])
    request = request_of(call)
    if grpc_call:
        return answer_of(await remote.infer(request))
    return answer_of(await rest.infer(base, request, model_name=call["model"]))


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.load(sys.stdin)))))
