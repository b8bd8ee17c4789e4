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
import platform
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from forwardpass.errors import ForwardpassError, InputError, MissingExtraError
from forwardpass.model import load
from forwardpass.modes.batch import BatchOptions, Job, Progress, Scored, Scorer, Summary, model_fingerprint
from forwardpass.modes.sources import open_source
from forwardpass.repository import default_repository

__all__ = ["PartScorer", "part_scored", "run_batch_on_ray"]


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
        drop: list[str],
        trust_pickle: bool,
    ) -> None:
        # A model or input this node cannot open is sent back as the answer to each part, not raised: raised here it
        # reached the driver as pages of Ray's tracebacks (the actor died, Ray restarted it), exit 1.
        self.refused: str | None = None
        try:
            self.model = load(
                model,
                repository=repository,
                version=version,
                intra_op_threads=intra_op_threads,
                trust_pickle=trust_pickle,
            )
            self.source = open_source(Path(input_path), self.model.config, drop)
        except ForwardpassError as exc:
            self.refused = f"on Ray node {platform.node()}: {exc}"
            return
        # what the driver checks against the job's: another node's copy of the input or model would score other data
        self.seen = {"input_fingerprint": self.source.fingerprint(), "model_fingerprint": model_fingerprint(self.model)}
        self.scorer = Scorer(self.model, batch_size=batch_size, top_k=top_k, workers=workers)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for start, stop in zip(batch["start"].tolist(), batch["stop"].tolist(), strict=True):
            if self.refused is not None:
                results.append(orjson.dumps({"refused": self.refused}))
                continue
            scored = self.scorer.score(itertools.islice(self.source.items(), start, stop))
            answer = {**asdict(scored), "node": platform.node(), **self.seen}
            results.append(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY))
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
    trust_pickle: bool = False,
) -> Summary:
    """`batch.run_batch` on Ray: `address` None starts a local Ray (unless this process is connected already);
    `trust_pickle` lets the actors load a pickled model, as `forwardpass.load`'s."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtraError("ray", "ray") from None
    job, version = _job(model, input_path, output_dir, options, repository, version, trust_pickle)
    todo = _parts_to_do(job)
    with job:
        try:
            if todo and not job.output.finished:
                connected_here = not ray.is_initialized()
                if connected_here:
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
                try:
                    arguments = _actor_arguments(
                        model, version, input_path, options, repository, actor_cpus, trust_pickle
                    )
                    done = job.output.records  # before this run: reported once, first, so that no rate counts them
                    if progress is not None:
                        progress(done, job.total)
                    scored_parts = _scored_parts(todo, arguments, actors, actor_cpus, job.identity)
                    for part, start, stop, scored in scored_parts:
                        job.commit(part, start, stop, scored)
                        done += stop - start
                        if progress is not None:
                            progress(done, job.total)
                finally:
                    if connected_here:
                        ray.shutdown()
            return job.finish(computed=sum(part["stop"] - part["start"] for part in todo))
        finally:
            if job.audit is not None:
                job.audit.close()


def _job(
    model: str,
    input_path: Path,
    output_dir: Path,
    options: BatchOptions,
    repository: Path | None,
    version: int | None,
    trust_pickle: bool,
) -> tuple[Job, int | None]:
    """The job, and the version every actor must open. Its records are counted with the config the actors' models
    complete (a model without config.yaml takes its preprocessing from the model file): with the declared config
    alone, a CSV for such a model was one record, and the actors scored its first row only. The actors hold their
    decisions and send them with their parts: the job audits them here, in this machine's audit log, as it does
    when it runs locally; its caller closes that log."""
    loaded = load(
        model, repository=repository, version=version, trust_pickle=trust_pickle, intra_op_threads=1, warmup=0
    )
    audit, loaded.audit = loaded.audit, None  # the job's, not closed with the model
    try:
        job = Job(loaded, input_path, output_dir, options, audit)
    except BaseException:
        if audit is not None:
            audit.close()
        raise
    finally:
        loaded.close()
    return job, loaded.version


def _parts_to_do(job: Job) -> list[dict[str, int]]:
    """The parts the output's manifest does not name yet, as (part, start, stop) records for Ray Data."""
    size, total = job.options.part_size, job.total
    return [
        {"part": index, "start": index * size, "stop": min(total, (index + 1) * size)}
        for index in range(-(-total // size))
        if not job.output.is_done(index)
    ]


def _scored_parts(
    todo: list[dict[str, int]], arguments: dict[str, Any], actors: int, actor_cpus: float, identity: dict[str, Any]
) -> Iterator[tuple[int, int, int, Scored]]:
    """(part, start, stop, its records scored) of every part to do, scored by a pool of `PartScorer` actors of the
    job with this `identity`."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI shows its own
    scored = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
        PartScorer,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
        fn_constructor_kwargs=arguments,
    )
    for batch in scored.iter_batches(batch_size=1, batch_format="numpy"):
        columns = (batch["part"].tolist(), batch["start"].tolist(), batch["stop"].tolist(), batch["result"])
        for part, start, stop, result in zip(*columns, strict=True):
            yield part, start, stop, part_scored(result, identity)


def part_scored(result: bytes, identity: dict[str, Any]) -> Scored:
    """A `PartScorer`'s answer for one part: its records scored, or refused in one line (InputError) where the
    actor could not open the model or input, or opened other files than the job's under the same names (a node
    whose copy differs: no shared file system)."""
    answer = orjson.loads(result)
    if "refused" in answer:
        raise InputError(f"the job's Ray actors cannot score it, {answer['refused']}")
    for key, what in (("input_fingerprint", "INPUT's files"), ("model_fingerprint", "the model's config or files")):
        if answer.pop(key) != identity[key]:
            raise InputError(
                f"on Ray node {answer['node']}, {what} differ from those the job started with (names, sizes or "
                "modification times): every node must read the same files, from a shared file system"
            )
    del answer["node"]
    return Scored(**answer)


def _actor_arguments(
    model: str,
    version: int | None,
    input_path: Path,
    options: BatchOptions,
    repository: Path | None,
    cpus: float,
    trust_pickle: bool,
) -> dict[str, Any]:
    """Everything an actor needs to open the same model and input on any node: absolute paths, explicit version.
    `model` is a path only where `locate` takes it for one: with no repository given."""
    as_path = Path(model)
    if repository is None and as_path.exists():
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
        "drop": list(options.drop),
        "trust_pickle": trust_pickle,
    }
