"""`forwardpass models`: what a repository holds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from forwardpass.cli.common import REPOSITORY, TRUST_PICKLE
from forwardpass.config import ModelConfig, StepConfig
from forwardpass.ensemble import pipelines_in, unready
from forwardpass.errors import ConfigError, ForwardpassError
from forwardpass.model import Model, load
from forwardpass.repository import CONFIG_FILE, Repository, default_repository
from forwardpass.tensor import TensorSpec

__all__ = ["register"]


def models(repository: Path | None = REPOSITORY, trust_pickle: bool = TRUST_PICKLE) -> None:
    """List the models of a repository: versions, inputs, outputs, how they are served and where they run.

    "pipeline" marks with * what was inferred from the model rather than declared in its config.yaml
    (`forwardpass init MODEL` shows why); a model that cannot load is listed UNAVAILABLE with its reason, and the
    others still load. "served" says whether a non-ONNX model runs in its own framework or converted to ONNX, and
    why; "versions" names the precision of each variant `forwardpass optimize` made, and the version it was made
    from.

    Examples:

      forwardpass models

      forwardpass models --repository /srv/models
    """
    repo = Repository(repository or default_repository())
    table = Table(title=f"models in {repo.root}")
    table.add_column("model", no_wrap=True)  # the names users must type: never cut or folded
    for column in ("versions", "inputs", "outputs", "pipeline", "served", "providers"):
        table.add_column(column, overflow="fold")  # a narrow terminal wraps the names of tensors, never cuts them
    inferred_any = False
    pipelines = {name: _steps(repo, name) for name in pipelines_in(repo.root)}
    steps_of_pipelines = {step.model for steps in pipelines.values() if isinstance(steps, list) for step in steps}
    kept: dict[str, Model] = {}  # the pipelines' steps, open until the pipelines are checked
    for name in repo.names():
        try:
            model = load(name, repository=repo.root, warmup=0, trust_pickle=trust_pickle)
        except ForwardpassError as exc:
            table.add_row(name, _versions(repo, name), "", "", "", f"[red]UNAVAILABLE[/]: {exc}", "")
            continue
        marks = {
            section: "*" if any(key.split(".")[0] == section for key in model.inferred) else ""
            for section in ("preprocess", "postprocess", "max_batch_size")
        }
        inferred_any = inferred_any or bool(model.inferred)
        pipeline = "→".join(
            kind
            for kind in (
                _kind(model.config.preprocess) + marks["preprocess"],
                model.serving.format,
                _kind(model.config.postprocess) + marks["postprocess"],
            )
            if kind and kind != "*"
        )
        if model.config.max_batch_size:
            pipeline += f"\nbatch ≤ {model.config.max_batch_size}{marks['max_batch_size']}"
        table.add_row(
            name,
            _versions(repo, name),
            "\n".join(_describe(spec) for spec in model.inputs),
            "\n".join(_describe(spec) for spec in model.outputs),
            pipeline,
            model.serving.describe(),
            ", ".join(p.removesuffix("ExecutionProvider") for p in model.session.providers),
        )
        if name in steps_of_pipelines:
            kept[name] = model
        else:
            model.close()
    for name, steps in pipelines.items():  # pipelines of the models above: no artefact, no versions of their own
        if isinstance(steps, ConfigError):
            table.add_row(name, "", "", "", "", f"[red]UNAVAILABLE[/]: {steps}", "")
            continue
        reason = unready(name, steps, kept.get)
        state = "pipeline of models" if reason is None else f"[red]UNAVAILABLE[/]: {reason}"
        table.add_row(name, "", "image", "regions", " → ".join(step.model for step in steps), state, "")
    for model in kept.values():
        model.close()
    Console().print(table)
    if inferred_any:
        Console().print("* inferred from the model, not declared; 'forwardpass init MODEL' writes it out with why")


def _steps(repo: Repository, name: str) -> list[StepConfig] | ConfigError:
    """The pipeline's steps, or why its config is refused (its row says so; the other models are listed)."""
    try:
        pipeline = ModelConfig.from_file(repo.root / name / CONFIG_FILE).pipeline
    except ConfigError as exc:
        return exc
    assert pipeline is not None  # pipelines_in found it declared
    return pipeline.steps


def _versions(repo: Repository, name: str) -> str:
    """e.g. "1, 2 (int8 of 1)", "1 (not served), 2" where the config's version_policy leaves a version out."""
    precisions = repo.precisions(name)
    sources = repo.derived_from(name)
    try:
        served = set(repo.served_versions(name))
    except ForwardpassError:  # a policy naming a missing version: the row's UNAVAILABLE says why
        served = set(repo.versions(name))
    listed = []
    for version in repo.versions(name):
        notes = [f"{precisions[version]} of {sources[version]}"] if version in sources else []
        notes += [] if version in served else ["not served"]
        listed.append(f"{version} ({', '.join(notes)})" if notes else str(version))
    return ", ".join(listed)


def _kind(section: object) -> str:
    return str(getattr(section, "kind", ""))


def _describe(spec: TensorSpec) -> str:
    return f"{spec.name} {spec.dtype.name} {list(spec.shape)}"


def register(app: typer.Typer) -> None:
    app.command()(models)
