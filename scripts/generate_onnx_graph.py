"""Regenerate forwardpass/formats/onnx_graph.py from the installed onnx: `python scripts/generate_onnx_graph.py`.

Reading a model's facts (its classifier nodes, labels, batch axis) needs ONNX's ModelProto, not the onnx package:
`import onnx` pulls in ml_dtypes, about 1 s of a server's start-up on a 2-vCPU machine. The module written here
holds the descriptor of `onnx/onnx-ml.proto` (serialized, in base64) and builds ModelProto from it in a private
descriptor pool, so it can live beside the real onnx package in one process.
"""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import onnx
from google.protobuf import descriptor_pb2
from onnx import onnx_ml_pb2

TARGET = Path(__file__).resolve().parent.parent / "forwardpass" / "formats" / "onnx_graph.py"

TEMPLATE = '''\
"""ONNX's ModelProto without the onnx package (whose import takes ~1 s here, for ml_dtypes): the descriptor of
`onnx/onnx-ml.proto` from onnx {version} (Apache-2.0, Copyright (c) ONNX Project Contributors), built in a private
descriptor pool so that it can sit beside the real onnx package. Written by scripts/generate_onnx_graph.py; do not
edit by hand.
"""

from __future__ import annotations

import base64

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

__all__ = ["ModelProto"]

_DESCRIPTOR = base64.b64decode(
{lines}
)
_FILE = descriptor_pool.DescriptorPool().AddSerializedFile(_DESCRIPTOR)
ModelProto: type[Message] = message_factory.GetMessageClass(_FILE.message_types_by_name["ModelProto"])
'''


def main() -> None:
    descriptor = descriptor_pb2.FileDescriptorProto()
    onnx_ml_pb2.DESCRIPTOR.CopyToProto(descriptor)
    encoded = base64.b64encode(descriptor.SerializeToString()).decode()
    lines = "\n".join(f'    "{chunk}"' for chunk in textwrap.wrap(encoded, 112))
    TARGET.write_text(TEMPLATE.format(version=onnx.__version__, lines=lines))
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
