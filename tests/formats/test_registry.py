"""The registry: which format an artefact is, where a repository's version folder keeps it, how it is opened, and
that none of this costs an import of a framework."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import forwardpass
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, NotFoundError
from forwardpass.formats import detect_format, open_model_session, registered_formats, resolve_artefact
from forwardpass.repository import Repository, find_artefact

HEAVY = ("torch", "tensorflow", "keras", "mxnet", "transformers", "sklearn", "xgboost", "lightgbm", "onnxruntime")


def touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def torch_zip(path: Path, *names: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(f"archive/{name}", b"")
    return path


def hf_folder(folder: Path) -> Path:
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        touch(folder / name, b"{}")
    return folder


ARTEFACTS = {
    "onnx": lambda root: touch(root / "model.onnx"),
    "huggingface": lambda root: hf_folder(root / "bert"),
    "savedmodel": lambda root: touch(root / "saved" / "saved_model.pb").parent,
    "mxnet": lambda root: touch(touch(root / "mx" / "net-symbol.json", b"{}").with_name("net-0000.params")).parent,
    "torch.export": lambda root: touch(root / "model.pt2"),
    "torchscript": lambda root: torch_zip(root / "model.bin", "code/__torch__.py", "data.pkl", "constants.pkl"),
    "keras": lambda root: touch(root / "model.keras"),
    "graphdef": lambda root: touch(root / "frozen.pb"),
    "tflite": lambda root: touch(root / "model.tflite"),
    "xgboost": lambda root: touch(root / "booster.json", b'{"learner": {"attributes": {}}}'),
    "lightgbm": lambda root: touch(root / "model.txt", b"tree\nversion=v4\n"),
    "sklearn": lambda root: touch(root / "pipeline.joblib"),
}


def test_every_format_is_registered_once():
    names = [fmt.name for fmt in registered_formats()]
    assert sorted(names) == sorted(ARTEFACTS) and len(set(names)) == len(names)
    assert all(isinstance(fmt.extra, str) for fmt in registered_formats())


@pytest.mark.parametrize("name", sorted(ARTEFACTS))
def test_each_artefact_is_detected_as_its_format(tmp_path: Path, name: str):
    assert detect_format(ARTEFACTS[name](tmp_path)).name == name


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: torch_zip(root / "model.zip", "code/__torch__.py", "data.pkl"), "torchscript"),
        (lambda root: torch_zip(root / "program.zip", "archive_format", "models/model.json"), "torch.export"),
        (lambda root: touch(root / "mx" / "net-symbol.json", b"{}").parent, None),  # a symbol without its params
        (lambda root: touch(root / "half" / "config.json", b"{}").parent, None),  # config.json without weights
    ],
)
def test_detection_reads_content_not_only_names(tmp_path: Path, make, expected: str | None):
    path = make(tmp_path)
    if expected is None:
        with pytest.raises(ConfigError, match="not a model in any known format"):
            detect_format(path)
    else:
        assert detect_format(path).name == expected


THIRD_PARTY_FORMAT = """
from pathlib import Path


class NumpyArchiveFormat:
    name = "npz-graph"
    extra = ""
    detect_rank = 115  # after lightgbm (110), before sklearn (120)

    def detect(self, path: Path) -> bool:
        return path.suffix == ".npzg"


NPZ_GRAPH = NumpyArchiveFormat()
"""


def install_format(site: Path, module_source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution installed as pip would: its module and a dist-info whose entry point registers its format."""
    touch(site / "npz_graph_format.py", module_source.encode())
    info = site / "npz_graph_format-1.0.dist-info"
    touch(info / "METADATA", b"Metadata-Version: 2.1\nName: npz-graph-format\nVersion: 1.0\n")
    touch(info / "entry_points.txt", b"[forwardpass.formats]\nnpz-graph = npz_graph_format:NPZ_GRAPH\n")
    monkeypatch.syspath_prepend(str(site))
    registered_formats.cache_clear()  # the registry reads entry points once per process


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever a test installs is gone afterwards: sys.path restored, module forgotten, entry points read again."""
    yield
    monkeypatch.undo()
    sys.modules.pop("npz_graph_format", None)
    registered_formats.cache_clear()


@pytest.mark.usefixtures("fresh_registry")
def test_a_format_registered_by_an_entry_point_is_detected_in_its_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_format(tmp_path / "site", THIRD_PARTY_FORMAT, monkeypatch)
    assert detect_format(touch(tmp_path / "net.npzg")).name == "npz-graph"
    names = [fmt.name for fmt in registered_formats()]
    assert names[-3:] == ["lightgbm", "npz-graph", "sklearn"]


@pytest.mark.usefixtures("fresh_registry")
def test_a_format_that_cannot_be_loaded_is_named_with_its_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_format(tmp_path / "site", "import a_module_nobody_installed\n", monkeypatch)
    with pytest.raises(ConfigError, match=r"'npz-graph = npz_graph_format:NPZ_GRAPH' .* fix or uninstall the package"):
        detect_format(touch(tmp_path / "model.onnx"))


def test_the_built_in_formats_are_asked_in_a_fixed_order() -> None:
    """Specific formats first: a generic `.json` or `.pb` goes to the format that checks its content."""
    assert [fmt.name for fmt in registered_formats()] == [
        "onnx",
        "huggingface",
        "savedmodel",
        "mxnet",
        "torch.export",
        "torchscript",
        "keras",
        "graphdef",
        "tflite",
        "xgboost",
        "lightgbm",
        "sklearn",
    ]


def test_an_unknown_file_lists_the_known_formats(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        detect_format(touch(tmp_path / "notes.md"))
    assert "notes.md" in str(info.value) and "torchscript" in str(info.value) and "huggingface" in str(info.value)


def test_a_missing_path_is_not_found(tmp_path: Path):
    with pytest.raises(NotFoundError, match="no model file or folder"):
        detect_format(tmp_path / "absent.pt")


def test_a_folder_with_one_model_among_other_files_resolves_to_it(tmp_path: Path):
    torch_zip(tmp_path / "model.pt", "code/x.py")
    touch(tmp_path / "labels.txt", b"cat\ndog\n")
    touch(tmp_path / "config.yaml", b"description: x\n")
    fmt, path = resolve_artefact(tmp_path)
    assert (fmt.name, path) == ("torchscript", tmp_path / "model.pt")


def test_a_folder_with_two_models_is_ambiguous(tmp_path: Path):
    touch(tmp_path / "a.keras")
    touch(tmp_path / "b.pt2")
    with pytest.raises(ConfigError, match=r"several models \(a\.keras, b\.pt2\)"):
        resolve_artefact(tmp_path)


def test_a_version_folder_may_be_the_model_itself(tmp_path: Path):
    hf_folder(tmp_path / "repo" / "bert" / "1")
    touch(tmp_path / "repo" / "bert" / "1" / ".forwardpass" / "model.onnx")  # a cache is never the model
    entry = Repository(tmp_path / "repo").resolve("bert")
    assert entry.artefact == tmp_path / "repo" / "bert" / "1"
    assert detect_format(entry.artefact).name == "huggingface"


def test_a_version_folder_may_hold_one_model_file_of_any_format(tmp_path: Path):
    touch(tmp_path / "repo" / "net" / "1" / "model.keras")
    touch(tmp_path / "repo" / "net" / "2" / ".forwardpass" / "model.onnx")  # only a cache: no version
    repository = Repository(tmp_path / "repo")
    assert repository.versions("net") == [1]
    assert repository.resolve("net").artefact == tmp_path / "repo" / "net" / "1" / "model.keras"
    with pytest.raises(NotFoundError, match="no model file or folder in it"):
        find_artefact(tmp_path / "repo" / "net" / "2")


def test_onnx_models_open_on_onnx_runtime(tmp_path: Path, add_model):
    session, serving = open_model_session(add_model(tmp_path / "add.onnx"), EngineConfig(warmup=0))
    assert (serving.format, serving.engine, serving.describe()) == ("onnx", "onnx", "onnx")
    assert session.providers == ["CPUExecutionProvider"]
    model = forwardpass.load(tmp_path / "add.onnx", warmup=0)
    assert model.serving.format == "onnx"


def test_an_unknown_serve_mode_is_refused(tmp_path: Path, add_model):
    add_model(tmp_path / "add.onnx")
    with pytest.raises(ConfigError, match="serve='fast' is not a serve mode; use one of auto, native, onnx"):
        forwardpass.load(tmp_path / "add.onnx", serve="fast")  # type: ignore[arg-type]


def test_the_config_source_section_is_validated(tmp_path: Path, add_model):
    add_model(tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "config.yaml").write_text(yaml.safe_dump({"source": {"serve": "fast"}}))
    with pytest.raises(ConfigError, match=r"field 'source.serve'"):
        forwardpass.load(tmp_path / "m")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_forwardpass_is_fast_and_loads_no_framework():
    """CPU time, not wall time: other processes on a busy machine slow the clock, not the work."""
    code = (
        "import sys, time\n"
        "start = time.process_time()\n"
        "import forwardpass, forwardpass.formats\n"
        "elapsed = time.process_time() - start\n"
        f"print(elapsed, sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    runs = [run_python(code) for _ in range(3)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr
    best = min(float(run.stdout.split()[0]) for run in runs)
    assert best < 0.5, f"import forwardpass took {best:.2f} s"
    assert runs[0].stdout.split(maxsplit=1)[1].strip() == "[]"


def test_a_missing_framework_is_one_line_naming_the_extra(tmp_path: Path):
    archive = torch_zip(tmp_path / "model.pt", "code/__torch__.py", "data.pkl")
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "import forwardpass\n"
        "from forwardpass.errors import MissingExtraError\n"
        "try:\n"
        f"    forwardpass.load({str(archive)!r}, serve='native')\n"
        "except MissingExtraError as exc:\n"
        "    print(exc)\n"
    )
    done = run_python(code)
    assert done.stdout.strip() == "torch is not installed: pip install 'forwardpass[torch]'", done.stderr
