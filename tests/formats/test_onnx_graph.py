"""ONNX facts are read with forwardpass's own ModelProto (formats/onnx_graph.py), never importing the onnx package,
and that ModelProto is the installed onnx's, field for field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
from google.protobuf import descriptor_pb2
from onnx import TensorProto, helper, onnx_ml_pb2

from forwardpass.formats import onnx_graph


def test_the_descriptor_is_the_installed_onnx_ml_proto() -> None:
    ours, theirs = descriptor_pb2.FileDescriptorProto(), descriptor_pb2.FileDescriptorProto()
    onnx_graph.ModelProto.DESCRIPTOR.file.CopyToProto(ours)
    onnx_ml_pb2.DESCRIPTOR.CopyToProto(theirs)
    assert ours == theirs, "onnx changed its proto: run scripts/generate_onnx_graph.py"


def test_a_classifiers_facts_are_read_without_importing_onnx(tmp_path: Path) -> None:
    classifier = helper.make_node(
        "LinearClassifier",
        ["x"],
        ["label", "scores"],
        domain="ai.onnx.ml",
        coefficients=[1.0] * 8,
        classlabels_strings=["cat", "dog"],
    )
    graph = helper.make_graph(
        [classifier],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
        ],
    )
    graph.node[0].output[1] = "probabilities"
    path = tmp_path / "classifier.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 3)]), path)
    probe = (
        "import json, sys\nfrom pathlib import Path\nfrom forwardpass.formats.facts import onnx_facts\n"
        f"facts = onnx_facts(Path({str(path)!r}))\n"
        "print(json.dumps({'classes': facts.classes, 'task': facts.task, 'scores': facts.scores_output,"
        " 'label': facts.label_output, 'batch_first': facts.batch_first,"
        " 'onnx': [m for m in ('onnx', 'ml_dtypes') if m in sys.modules]}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == {
        "classes": ["cat", "dog"],
        "task": "classification",
        "scores": "probabilities",
        "label": "label",
        "batch_first": True,
        "onnx": [],
    }
