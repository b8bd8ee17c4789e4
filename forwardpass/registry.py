"""ModelRegistry: the models and versions a server runs, loaded from a Repository, each behind its own Batcher.

Every numbered version of a model is served (or those its config's `version_policy` names); a request without a
version gets the highest. Loading (explicitly or because the repository changed) opens the new or changed versions
in a thread while traffic flows, swaps them in with one assignment, and drains what they replace: requests already
inside an old version finish there, new ones reach the new version, none fails.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from forwardpass.backends.base import Session
from forwardpass.config import ModelConfig
from forwardpass.errors import ConfigError, Forbidden, ForwardpassError, NotFoundError
from forwardpass.model import Model, load, locate_configured
from forwardpass.repository import Repository
from forwardpass.scheduler.batcher import Batcher, Runner
from forwardpass.scheduler.sequence import SequenceBatcher, state_slots
from forwardpass.tensor import TensorSpec

__all__ = ["ModelRegistry", "Served", "available_cores"]

log = logging.getLogger(__name__)

BatchObserver = Callable[["Served", int, float], None]  # (version, rows in the batch, seconds of forward pass)
Fingerprint = tuple[tuple[str, int, int], ...]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(eq=False)
class Served:
    """One version of one model as the server runs it."""

    model: Model
    batcher: Batcher
    sessions: list[Session]  # one per instance; the model's own first
    max_batch_size: int  # 0 when the config turns batching off or the model has no dynamic batch dimension
    fingerprint: Fingerprint
    sequencer: SequenceBatcher | None = None  # stateful models (config `sequence_batching:`) run their steps here
    active: int = 0
    _idle: asyncio.Event | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return str(self.model.version if self.model.version is not None else 1)

    @property
    def depth(self) -> int:
        """Requests (or sequence steps) waiting for an instance."""
        return self.batcher.depth + (self.sequencer.depth if self.sequencer is not None else 0)

    @property
    def inputs(self) -> list[TensorSpec]:
        """What clients send: a stateful model's state inputs are the server's business."""
        return self.sequencer.inputs if self.sequencer is not None else self.model.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        hidden = self.sequencer.state_outputs if self.sequencer is not None else frozenset()
        return [spec for spec in self.model.outputs if spec.name not in hidden]

    @contextmanager
    def in_use(self) -> Iterator[Served]:
        """Held by a request from lookup to answer, so that retiring this version waits for it."""
        self.active += 1
        try:
            yield self
        finally:
            self.active -= 1
            if self._idle is not None and not self.active:
                self._idle.set()

    async def retire(self) -> None:
        """Wait for the requests inside, drain the batcher, close the sessions."""
        if self.active:
            self._idle = asyncio.Event()
            await self._idle.wait()
        await self.batcher.drain()
        if self.sequencer is not None:
            await self.sequencer.drain()
        for session in self.sessions:
            session.close()
        if self.model.audit is not None:  # moves the decisions its audit journal still holds into the log
            self.model.audit.close()


class ModelRegistry:
    def __init__(
        self,
        repository: Repository,
        *,
        on_batch: BatchObserver | None = None,
        cores: int | None = None,
        trust_pickle: bool = False,
        loads_refused: str | None = None,
    ) -> None:
        self.repository = repository
        # Why `load` and `unload` requests (the repository API) are refused, when they are: the models then follow
        # the repository alone (start-up and polling), as a Ray Serve replica's must.
        self.loads_refused = loads_refused
        self.trust_pickle = trust_pickle
        self.on_batch = on_batch  # told of every batch of every version loaded from now on: metrics
        self._cores = cores or available_cores()
        self._versions: dict[str, dict[int, Served]] = {}
        self._latest: dict[str, Served] = {}
        self._left_out: dict[str, set[int]] = {}  # per model, versions on disk its version_policy does not serve
        self._wanted: set[str] = set()  # models that should be loaded
        self._seen: set[str] = set()  # models the repository has shown us; polling only adds new ones
        self._failed: dict[str, str] = {}
        self._unloaded: dict[str, list[int]] = {}  # the versions a model served when unloaded: the index keeps them
        self._failed_files: dict[str, dict[int, Fingerprint]] = {}  # what a failed load read: polls retry on a change
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._watching: asyncio.Task[None] | None = None
        # Sessions open one per core at a time, largest model first: ten sessions built and warmed up at once on two
        # cores finish later than the same ten two at a time (measured: 0.54 s vs 0.3 s for the bundled models).
        self._opening = asyncio.Semaphore(self._cores)

    def get(self, name: str, version: str | None = None) -> Served:
        """The served version (the highest when `version` is None or empty); NotFoundError otherwise."""
        if not version:
            served = self._latest.get(name)
            if served is None:
                raise self._not_loaded(name)
            return served
        versions = self._versions.get(name)
        if versions is None:
            raise self._not_loaded(name)
        found = versions.get(int(version)) if version.isascii() and version.isdigit() and len(version) < 19 else None
        if found is None:
            if version.isdigit() and len(version) < 19 and int(version) in self._left_out.get(name, ()):
                raise NotFoundError(
                    f"model '{name}' version {version} is not served: its version_policy serves {sorted(versions)}"
                )
            shown = version if len(version) <= 64 else f"{version[:64]}…"
            raise NotFoundError(f"model '{name}' has no version '{shown}'; versions: {sorted(versions)}")
        return found

    def loaded(self) -> list[Served]:
        return [served for versions in self._versions.values() for served in versions.values()]

    def versions(self, name: str) -> list[str]:
        self.get(name)
        return [str(version) for version in sorted(self._versions[name])]

    def ready(self) -> bool:
        """Every model that should be loaded is loaded."""
        return all(name in self._latest for name in self._wanted)

    def index(self, names: Iterable[str] | None = None) -> list[dict[str, str]]:
        """Triton's repository index: every model the repository holds (`names`, when the caller listed them off the
        event loop) or the registry serves, with its state."""
        rows: list[dict[str, str]] = []
        listed = self.repository.names() if names is None else names
        for name in sorted(set(listed) | self._versions.keys()):
            versions = self._versions.get(name)
            if versions:
                failed = self._failed.get(name)
                reason = f"serving the files loaded before; reloading failed: {failed}" if failed else ""
                rows.extend(
                    {"name": name, "version": str(v), "state": "READY", "reason": reason} for v in sorted(versions)
                )
            else:  # as Triton's index: each version it served, once unloaded ("" for a model never served)
                reason = self._failed.get(name, "unloaded")
                served = [str(v) for v in self._unloaded.get(name, ())] or [""]
                rows.extend({"name": name, "version": v, "state": "UNAVAILABLE", "reason": reason} for v in served)
        return rows

    async def load_all(self) -> None:
        """Load every model of the repository, side by side; a model that fails is logged and left unavailable."""
        for folder in self.repository.misnamed():
            log.warning(
                "model folder '%s' is not served: its name is not a valid model name (letters, digits, '.', '_', "
                "'-'); rename it",
                folder,
            )
        names = sorted(self.repository.names(), key=self._size, reverse=True)
        results = await asyncio.gather(*(self._load(name) for name in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, ForwardpassError):
                log.warning("model '%s' not loaded: %s", name, result)
            elif isinstance(result, BaseException):
                raise result

    def _size(self, name: str) -> int:
        """Bytes of a model's files: big models start loading first, so the last to finish is a small one."""
        versions = self.repository.versions(name)
        return sum(size for _, _, size in _fingerprint(self.repository, name, versions[-1])) if versions else 0

    async def load(self, name: str) -> None:
        """A request to load (or reload) a model; Forbidden when `loads_refused`."""
        self._check_request()
        await self._load(name)

    async def unload(self, name: str) -> None:
        """A request to stop serving a model; returns when the requests already inside it have finished. Forbidden
        when `loads_refused`."""
        self._check_request()
        await self._unload(name)

    async def _load(self, name: str) -> None:
        """Load (or reload) every version of a model: new and changed versions open beside the old, then swap."""
        # unknown names leave no trace; looking for them reads the repository: in a thread, not on the loop
        if name not in self._wanted and not await asyncio.to_thread(self.repository.versions, name):
            raise NotFoundError(f"model '{name}' has no numbered version folder with a model file")
        async with self._lock(name):
            self._wanted.add(name)
            self._seen.add(name)
            files = self._files(name)
            try:
                await self._sync(name)
            except ForwardpassError as exc:
                self._failed[name] = str(exc)
                self._failed_files[name] = files
                raise
            self._failed.pop(name, None)
            self._failed_files.pop(name, None)
            self._unloaded.pop(name, None)

    async def _unload(self, name: str) -> None:
        if name not in self._versions and name not in self._wanted:  # not loaded: nothing to do, and no trace left
            if not await asyncio.to_thread(self.repository.versions, name):
                raise NotFoundError(f"model '{name}' is neither loaded nor in the repository")
            return
        async with self._lock(name):
            self._wanted.discard(name)
            self._latest.pop(name, None)
            self._left_out.pop(name, None)
            old = self._versions.pop(name, {})
            if old:
                self._unloaded[name] = sorted(old)
            await asyncio.gather(*(served.retire() for served in old.values()))

    async def poll(self) -> None:
        """One look at the repository: load new models, reload changed ones, unload removed ones. The looking runs
        in a thread: on a repository of thousands of models it takes seconds, which the loop's requests need."""
        names = set(await asyncio.to_thread(self.repository.names))
        for name in sorted(names - self._seen):
            await self._try(self._load, name)
        watched = sorted(self._wanted & names)
        found = await asyncio.to_thread(lambda: {name: self._files(name) for name in watched})
        for name in watched:
            loaded = {v: served.fingerprint for v, served in self._versions.get(name, {}).items()}
            changed = found[name] not in (loaded, self._failed_files.get(name))  # failed: again once files change
            if changed and name in self._wanted:  # not unloaded by a request while we looked
                await self._try(self._load, name)
        for name in sorted(self._wanted - names):
            await self._try(self._unload, name)

    def watch(self, interval_s: float) -> asyncio.Task[None]:
        """Poll the repository every `interval_s` seconds, from now until `close` (or the task is cancelled)."""
        self._watching = asyncio.create_task(self._watch(interval_s))
        return self._watching

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll()
            except OSError as exc:  # files moving under our feet; the next look sees the settled state
                log.warning("repository poll failed: %s", exc)
            except Exception:  # a bug: logged, and the next look still comes (polling ended silently)
                log.exception("repository poll failed")

    async def close(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
        for name in list(self._versions):
            await self._unload(name)
        await asyncio.gather(*self._retiring)

    def _check_request(self) -> None:
        if self.loads_refused is not None:
            raise Forbidden(self.loads_refused)

    async def _sync(self, name: str) -> None:
        # reads the config: off the loop
        on_disk, numbers = await asyncio.to_thread(
            lambda: (self.repository.versions(name), self.repository.served_versions(name))
        )
        if not numbers:
            raise NotFoundError(f"model '{name}' has no numbered version folder with a model file")
        current = self._versions.get(name, {})
        fresh: dict[int, Served] = {}
        opened: list[Served] = []
        try:
            for number in numbers:
                fingerprint = _fingerprint(self.repository, name, number)
                old = current.get(number)
                if old is not None and old.fingerprint == fingerprint:
                    fresh[number] = old
                else:
                    async with self._opening:
                        fresh[number] = await asyncio.to_thread(self._open, name, number, fingerprint)
                    opened.append(fresh[number])
            default = await asyncio.to_thread(self._default_version, name, numbers)  # reads the config: off the loop
        except BaseException:
            for served in opened:
                await served.retire()
            raise
        self._versions[name] = fresh
        self._left_out[name] = set(on_disk) - set(numbers)
        self._latest[name] = fresh[default]
        kept = {id(served) for served in fresh.values()}
        for served in current.values():
            if id(served) not in kept:
                task = asyncio.create_task(served.retire())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    def _open(self, name: str, version: int, fingerprint: Fingerprint) -> Served:
        """In a thread: the model, one session per instance (cores split between them), its batcher."""
        entry = self.repository.resolve(name, version)
        config = ModelConfig.of(entry.config_path)
        threads = config.engine.intra_op_threads or max(1, self._cores // config.instances)
        model = load(
            name,
            repository=self.repository.root,
            version=version,
            trust_pickle=self.trust_pickle,
            intra_op_threads=threads,
        )
        _check_writable(model)
        config = model.config  # as completed from the model: batching inferred where the config leaves it out
        instances = model.instances(config.instances)
        sessions = [session for session, _ in instances]
        max_batch_size = config.max_batch_size if model.batchable else 0
        batching = config.dynamic_batching
        runners: list[Runner] = [runner for _, runner in instances]
        batcher = Batcher(
            runners,
            max_batch_size=max_batch_size,
            preferred_batch_sizes=batching.preferred_batch_size,
            max_queue_delay_s=batching.max_queue_delay_us / 1e6,
            max_queue_size=batching.max_queue_size,
            name=name,
        )
        sequencer = None
        if config.sequence_batching is not None:
            sequencing = config.sequence_batching
            sequencer = SequenceBatcher(
                runners,
                model.inputs,
                state_slots(sequencing, model.inputs, model.outputs),
                max_batch_size=config.max_batch_size,
                max_sequences=sequencing.max_sequences,
                max_sequences_per_client=sequencing.client_share,
                idle_timeout_s=sequencing.idle_timeout_s,
                max_queue_size=batching.max_queue_size,
                name=name,
            )
        served = Served(model, batcher, sessions, max_batch_size, fingerprint, sequencer)
        if self.on_batch is not None:
            observer = self.on_batch
            batcher.on_batch = lambda rows, run_s: observer(served, rows, run_s)
            if sequencer is not None:
                sequencer.on_batch = batcher.on_batch
        return served

    def _files(self, name: str) -> dict[int, Fingerprint]:
        return {v: _fingerprint(self.repository, name, v) for v in self.repository.versions(name)}

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _not_loaded(self, name: str) -> NotFoundError:
        ready = ", ".join(sorted(self._latest)) or "none"
        return NotFoundError(f"model '{name}' is not loaded; ready models: {ready}")

    def _default_version(self, name: str, numbers: list[int]) -> int:
        """What a request naming no version gets: what `load` picks (the highest version, or the highest of the
        config's `precision:`)."""
        return locate_configured(name, self.repository.root)[0].version or numbers[-1]

    async def _try(self, action: Callable[[str], Awaitable[None]], name: str) -> None:
        try:
            await action(name)
        except ForwardpassError as exc:
            log.warning("repository poll: model '%s': %s", name, exc)


def _check_writable(model: Model) -> None:
    """A decision model answers only once its decisions are recorded: an audit log it cannot write fails its load
    (the model UNAVAILABLE, readiness 503) rather than every request."""
    try:
        model.check_audit_log()
    except ConfigError as exc:
        raise ConfigError(f"model '{model.name}': {exc}") from None


def _fingerprint(repository: Repository, name: str, version: int) -> Fingerprint:
    """What a version's files look like (the model folder's own files and the version folder's): a change reloads."""
    model_dir = repository.root / name
    files = [p for p in model_dir.iterdir() if p.is_file()]
    version_dir = model_dir / str(version)
    if version_dir.is_dir():
        files.extend(p for p in version_dir.rglob("*") if p.is_file())
    # hidden entries (a conversion cache written while loading) are not the model: they must not trigger a reload
    visible = [p for p in files if not any(part.startswith(".") for part in p.relative_to(model_dir).parts)]
    return tuple(sorted((str(p.relative_to(model_dir)), *_stat(p)) for p in visible))


def _stat(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:  # removed while we looked
        return (0, 0)
    return (info.st_mtime_ns, info.st_size)
