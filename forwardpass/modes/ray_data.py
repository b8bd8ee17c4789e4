"""The batch job on Ray Data: the same parts, records, scorer and output as `modes.batch`, with the scoring spread
over an actor pool on a Ray cluster (`--ray` starts a local Ray; `--ray-address` joins one).

    parts to do (driver)  ──►  map_batches(PartScorer, ActorPoolStrategy)  ──►  atomic part files + manifest (driver)
                               each actor holds one Model; it reads its
                               part's records and scores them

The driver lists the parts the manifest does not name yet; each actor reads the records of a part itself (the input
must be readable at the same path on every node: a shared file system; to find them it reads the input from its
start, which costs a path per record for image folders and a parse per record for tables, no inference), scores
them with `batch.Scorer`, and sends back the rows and errors. The driver writes them through the same
`sinks.Output` as a local job, so output, schema, exactly-once resume and errors file are the same. Every stage
asks for a fraction of a CPU: on a 2-CPU cluster, stages that each want a whole CPU wait for each other forever.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from forwardpass.errors import MissingExtraError
from forwardpass.model import load, locate_configured
from forwardpass.modes.batch import BatchOptions, Progress, Scorer, Summary, check_errors, job_identity
from forwardpass.modes.sinks import Output
from forwardpass.modes.sources import open_source
from forwardpass.repository import default_repository

__all__ = ["PartScorer", "run_batch_on_ray"]


class PartScorer:
    """A Ray Data actor: holds one Model and the input's record source; scores whole parts."""

    def __init__(
        self,
        model: str,
        repository: str | None,
        version: int | None,
        input_path: str,
        batch_size: int | None,
        top_k: int | None,
        workers: int,
        intra_op_threads: int,
    ) -> None:
        self.model = load(model, repository=repository, version=version, intra_op_threads=intra_op_threads)
        self.source = open_source(Path(input_path), self.model.config)
        self.scorer = Scorer(self.model, batch_size=batch_size, top_k=top_k, workers=workers)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for start, stop in zip(batch["start"].tolist(), batch["stop"].tolist(), strict=True):
            rows, errors = self.scorer.score(itertools.islice(self.source.items(), start, stop))
            results.append(orjson.dumps({"rows": rows, "errors": errors}, option=orjson.OPT_SERIALIZE_NUMPY))
        return {
            "part": batch["part"],
            "start": batch["start"],
            "stop": batch["stop"],
            "result": np.array(results, dtype=object),
        }


def run_batch_on_ray(
    model: str,
    input_path: Path,
    output_dir: Path,
    options: BatchOptions,
    *,
    repository: Path | None = None,
    version: int | None = None,
    address: str | None = None,
    actors: int = 2,
    actor_cpus: float = 0.5,
    progress: Progress | None = None,
) -> Summary:
    """`batch.run_batch` on Ray: `address` None starts a local Ray (unless this process is connected already)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtraError("ray", "ray") from None
    started = time.perf_counter()
    entry, config = locate_configured(model, repository, version)
    source = open_source(input_path, config)
    total = source.count()
    output = Output(
        output_dir,
        options.output_format,
        job_identity(entry.name, entry.version, input_path, total, options),
        resume=options.resume,
    )
    size = options.part_size
    todo = [
        {"part": index, "start": index * size, "stop": min(total, (index + 1) * size)}
        for index in range(-(-total // size))
        if not output.is_done(index)
    ]
    done = total - sum(part["stop"] - part["start"] for part in todo)
    if todo and not output.finished:
        connected_here = not ray.is_initialized()
        if connected_here:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the CLI shows its own
            scored = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
                PartScorer,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=actor_cpus,
                fn_constructor_kwargs=_actor_arguments(
                    model, entry.version, input_path, options, repository, actor_cpus
                ),
            )
            for batch in scored.iter_batches(batch_size=1, batch_format="numpy"):
                for part, start, stop, result in zip(
                    batch["part"].tolist(),
                    batch["start"].tolist(),
                    batch["stop"].tolist(),
                    batch["result"],
                    strict=True,
                ):
                    scored_part = orjson.loads(result)
                    output.commit(part, start, stop, scored_part["rows"], scored_part["errors"])
                    check_errors(output, options.max_errors)
                    done += stop - start
                    if progress is not None:
                        progress(done, total)
        finally:
            if connected_here:
                ray.shutdown()
    if not output.finished:
        output.finish()
    computed = sum(part["stop"] - part["start"] for part in todo)
    return Summary(total, output.rows, output.errors, computed, time.perf_counter() - started, output_dir)


def _actor_arguments(
    model: str, version: int | None, input_path: Path, options: BatchOptions, repository: Path | None, cpus: float
) -> dict[str, Any]:
    """Everything an actor needs to open the same model and input on any node: absolute paths, explicit version."""
    as_path = Path(model)
    if as_path.exists():
        model, repo = str(as_path.resolve()), None
    else:
        repo = str((repository or default_repository()).resolve())
    return {
        "model": model,
        "repository": repo,
        "version": version,
        "input_path": str(input_path.resolve()),
        "batch_size": options.batch_size,
        "top_k": options.top_k,
        "workers": options.workers,
        "intra_op_threads": max(1, round(cpus)),
    }
