"""The TensorFlow ops a graph could read, write or reach outside its model with, refused in untrusted graphs.

A SavedModel or frozen graph is a program: tf.io.read_file / write_file, file-reading datasets and readers, summary
writers, debug dumps and RPCs run with the server's rights when the graph runs, and a SavedModel's initializers run
while it loads. So every node of every function the file holds is checked before TensorFlow opens it. The
checkpoint ops (SaveV2, RestoreV2, ...) stay allowed: every SavedModel's saver reads its variables folder with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from forwardpass.errors import ConfigError

__all__ = ["IO_OPS", "refuse_io_ops"]

IO_OPS = frozenset(
    {
        # files named by the graph
        "ReadFile",
        "WriteFile",
        "MatchingFiles",
        "ImmutableConst",
        "InitializeTableFromTextFile",
        "InitializeTableFromTextFileV2",
        "LoadAndRemapMatrix",
        "DecodeProtoV2",
        "EncodeProto",
        "RecordInput",
        "CalibrationStatisticsSaver",
        "FileSystemSetConfiguration",
        # readers and datasets over files, databases and other hosts
        *(
            f"{kind}Reader{v}"
            for kind in ("WholeFile", "TextLine", "TFRecord", "FixedLengthRecord")
            for v in ("", "V2")
        ),
        "LMDBReader",
        "TextLineDataset",
        "TFRecordDataset",
        "TFRecordDatasetV2",
        "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2",
        "CSVDataset",
        "CSVDatasetV2",
        "ExperimentalCSVDataset",
        "LMDBDataset",
        "ExperimentalLMDBDataset",
        "SqlDataset",
        "ExperimentalSqlDataset",
        "MatchingFilesDataset",
        "ExperimentalMatchingFilesDataset",
        "LoadDataset",
        "SaveDataset",
        "SaveDatasetV2",
        "DistributedSave",
        "SnapshotDataset",
        "SnapshotDatasetV2",
        "SnapshotChunkDataset",
        "SnapshotDatasetReader",
        "SnapshotNestedDatasetReader",
        "ListSnapshotChunksDataset",
        "CacheDataset",
        "CacheDatasetV2",
        "DatasetToTFRecord",
        "ExperimentalDatasetToTFRecord",
        "DataServiceDataset",
        "DataServiceDatasetV2",
        "DataServiceDatasetV3",
        "DataServiceDatasetV4",
        # writers of summaries, prints and debug dumps to a path or URL
        "CreateSummaryFileWriter",
        "CreateSummaryDbWriter",
        "SummaryWriter",
        "StatsAggregatorSetSummaryWriter",
        *(f"Write{kind}Summary" for kind in ("", "Scalar", "Histogram", "Image", "Audio", "Graph", "RawProto")),
        "PrintV2",
        "DebugIdentity",
        "DebugIdentityV2",
        "DebugIdentityV3",
        "DebugNanCount",
        "DebugNumericSummary",
        "DebugNumericSummaryV2",
        # other hosts and Python
        "RpcServer",
        "RpcServerStart",
        "RpcServerRegister",
        "RpcClient",
        "RpcCall",
        "RemoteCall",
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
    }
)


def refuse_io_ops(path: Path, graph_defs: Iterable[Any], format_name: str) -> None:
    """ConfigError naming the ops when any node of the graphs (their top level and function library) is an I/O op."""
    found = sorted(
        {
            node.op
            for graph_def in graph_defs
            for nodes in (graph_def.node, *(function.node_def for function in graph_def.library.function))
            for node in nodes
            if node.op in IO_OPS
        }
    )
    if found:
        raise ConfigError(
            f"{path}: this {format_name} graph reads, writes or reaches outside the model ({', '.join(found)}); "
            "load it only if you trust the file: --trust-pickle / trust_pickle=True"
        )
