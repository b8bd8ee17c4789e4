"""PyTorch: TorchScript archives and torch.export programs, run natively and converted, against torch's own outputs."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import forwardpass
from forwardpass.errors import ConfigError
from forwardpass.formats import ServeMode, convert_model, detect_format

HELD_OUT = 40
ATOL = 1e-4


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).mean(dim=(2, 3)))


class TwoHeads(nn.Module):
    """Returns a tuple: outputs are named output_0, output_1 natively and in ONNX alike."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 4)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(features)
        return hidden.softmax(dim=1), hidden.sum(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def held_out(cnn: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(7).standard_normal((HELD_OUT, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        expected = cnn(torch.from_numpy(images)).numpy()
    return images, expected


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory, cnn: nn.Module) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("torch")
    example = torch.randn(2, 3, 16, 16)
    paths = {name: folder / name for name in ("traced.pt", "scripted.pt", "program.pt2", "weights.pth", "whole.pth")}
    torch.jit.save(torch.jit.trace(cnn, example), paths["traced.pt"])
    torch.jit.save(torch.jit.script(cnn), paths["scripted.pt"])
    program = torch.export.export(cnn, (example,), dynamic_shapes={"image": {0: torch.export.Dim("batch")}})
    torch.export.save(program, paths["program.pt2"])
    torch.save(cnn.state_dict(), paths["weights.pth"])
    torch.save(cnn, paths["whole.pth"])
    return paths


def run_in_batches(model: forwardpass.Model, images: np.ndarray, output: str) -> np.ndarray:
    """The first 8 items one by one, the rest in batches of 16: both batch sizes must work."""
    rows = [model.infer({model.inputs[0].name: images[i : i + 1]})[output] for i in range(8)]
    rows += [model.infer({model.inputs[0].name: images[i : i + 16]})[output] for i in range(8, len(images), 16)]
    return np.concatenate(rows)


def assert_matches(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= ATOL
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.parametrize("serve", ["native", "onnx"])
@pytest.mark.parametrize("name", ["traced.pt", "program.pt2"])
def test_runs_like_torch_natively_and_converted(
    artefacts: dict[str, Path], held_out: tuple[np.ndarray, np.ndarray], name: str, serve: ServeMode, tmp_path: Path
):
    path = shutil.copy(artefacts[name], tmp_path / name)  # the conversion cache goes beside the file
    model = forwardpass.load(path, serve=serve, warmup=0)
    images, expected = held_out
    assert model.serving.engine == serve
    assert model.serving.format == ("torchscript" if name.endswith(".pt") else "torch.export")
    assert [(s.name, s.shape) for s in model.inputs] == [("image", (-1, 3, 16, 16))]
    assert [(s.name, s.shape) for s in model.outputs] == [("output", (-1, 10))]
    assert_matches(run_in_batches(model, images, "output"), expected)
    (_, _), (another, _) = model.instances(2)  # a server's second instance runs the same way
    assert another.providers == model.session.providers
    assert np.array_equal(another.run({"image": images[:3]})["output"], model.infer({"image": images[:3]})["output"])
    another.close()
    if serve == "onnx":
        assert model.serving.converted is not None and model.serving.converted.is_file()
        assert model.serving.parity is not None and model.serving.parity["max_abs_diff"] <= ATOL
    model.close()


def test_scripted_archive_needs_its_input_shape(artefacts: dict[str, Path]):
    with pytest.raises(ConfigError, match=r"scripted.pt: .*no shape for input 'image'.*--input image="):
        forwardpass.load(artefacts["scripted.pt"], serve="native")


@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_scripted_archive_runs_with_shapes_from_the_config(
    artefacts: dict[str, Path], held_out: tuple[np.ndarray, np.ndarray], tmp_path: Path, serve: str
):
    folder = tmp_path / "repo" / "cnn"
    (folder / "1").mkdir(parents=True)
    shutil.copy(artefacts["scripted.pt"], folder / "1" / "model.pt")
    source = {"serve": serve, "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]}
    (folder / "config.yaml").write_text(yaml.safe_dump({"source": source}))
    model = forwardpass.load("cnn", repository=tmp_path / "repo", warmup=0)
    images, expected = held_out
    assert model.serving.engine == serve
    assert_matches(run_in_batches(model, images, "output"), expected)


def test_tuple_outputs_keep_one_name_in_both_engines(tmp_path: Path):
    torch.manual_seed(1)
    module = TwoHeads().eval()
    path = tmp_path / "heads.pt"
    torch.jit.save(torch.jit.trace(module, torch.randn(2, 6)), path)
    features = np.random.default_rng(3).standard_normal((33, 6)).astype(np.float32)
    with torch.inference_mode():
        probabilities, totals = (t.numpy() for t in module(torch.from_numpy(features)))
    for serve in ("native", "onnx"):
        model = forwardpass.load(path, serve=serve, warmup=0)
        assert [s.name for s in model.outputs] == ["output_0", "output_1"]
        got = model.infer({"features": features})
        assert_matches(got["output_0"], probabilities)
        assert np.abs(got["output_1"] - totals).max() <= ATOL


class TokenEmbedding(nn.Module):
    """Token ids (int64) into a small vocabulary: any id past 9 is out of range, as in a user's text model."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids).mean(dim=1)


@pytest.mark.parametrize("name", ["ids.pt", "ids.pt2"])
def test_token_ids_into_a_small_vocabulary_load_and_answer_as_torch(name: str, tmp_path: Path):
    torch.manual_seed(2)
    module = TokenEmbedding().eval()
    ids = torch.randint(0, 10, (5, 6))
    path = tmp_path / name
    if name.endswith(".pt2"):
        torch.export.save(torch.export.export(module, (ids,), dynamic_shapes=({0: torch.export.Dim("batch")},)), path)
    else:
        torch.jit.save(torch.jit.trace(module, ids[:2]), path)
    with torch.inference_mode():
        expected = module(ids).numpy()

    model = forwardpass.load(path, warmup=0)  # auto: parity inputs with ids past the vocabulary leave it native
    assert [(spec.name, spec.dtype.name, spec.shape) for spec in model.inputs] == [("ids", "INT64", (-1, 6))]
    assert model.serving.engine == "native"
    assert_matches(model.infer({"ids": ids.numpy()})["output"], expected)


def test_conversion_records_its_provenance(artefacts: dict[str, Path], tmp_path: Path):
    provenance = convert_model(artefacts["traced.pt"], tmp_path / "out" / "cnn.onnx")
    written = json.loads((tmp_path / "out" / "cnn.json").read_text())
    assert written["source"]["format"] == provenance["source"]["format"] == "torchscript"
    assert written["opset"] == 17
    assert written["tool_versions"]["torch"] == torch.__version__
    assert written["tool_versions"]["onnxruntime"]
    parity = written["parity"]
    assert parity["samples"] == 32 and parity["batch_sizes"][0] == 1 and max(parity["batch_sizes"]) > 1
    assert parity["max_abs_diff"] <= ATOL and parity["top1_agreement"] == 1.0
    assert written["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]


def test_exported_programs_convert_at_opset_18_at_least(artefacts: dict[str, Path], tmp_path: Path):
    provenance = convert_model(artefacts["program.pt2"], tmp_path / "program")
    assert (tmp_path / "program.onnx").is_file() and (tmp_path / "program.json").is_file()
    assert provenance["opset"] >= 18 and provenance["opset_requested"] == 17
    assert provenance["source"]["format"] == "torch.export"


@pytest.mark.parametrize("name", ["weights.pth", "whole.pth"])
def test_a_checkpoint_is_not_a_model(artefacts: dict[str, Path], name: str):
    assert detect_format(artefacts[name]).name == "torchscript"
    with pytest.raises(ConfigError, match=rf"{name}: a torch.save checkpoint .* torch.jit.save"):
        forwardpass.load(artefacts[name], serve="native")


class _WritesMarker:
    """A pickle that touches a file when it is loaded: proof of whether a loader unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def _with_payload(program: Path, hostile: Path, marker: Path, member: str) -> None:
    """The program's archive with `member` (and, for a weight, its config marking it pickled) a code-running pickle."""
    with zipfile.ZipFile(program) as source, zipfile.ZipFile(hostile, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("model_weights_config.json") and member == "weights/weight_0":
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            if info.filename.endswith("model_constants_config.json") and member == "constants/opaque_obj_0":
                data = json.dumps({"config": {"c": {"path_name": "opaque_obj_0"}}}).encode()
                target.writestr(info.filename.replace("model_constants_config.json", "opaque_obj_0"), b"")
            if info.filename.endswith(f"/data/{member}"):
                data = pickle.dumps(_WritesMarker(marker))
            target.writestr(info, data)


@pytest.mark.parametrize("member", ["sample_inputs/model.pt", "weights/weight_0", "constants/opaque_obj_0"])
def test_a_program_that_pickles_python_objects_is_refused_without_the_trust_flag(
    artefacts: dict[str, Path], tmp_path: Path, member: str
):
    hostile, marker = tmp_path / "hostile.pt2", tmp_path / "ran"
    _with_payload(artefacts["program.pt2"], hostile, marker, member)
    with pytest.raises(ConfigError, match=r"hostile.pt2: .*pickled Python objects.*--trust-pickle"):
        forwardpass.load(hostile, serve="native")
    assert not marker.exists()


@pytest.mark.parametrize(("name", "format_name"), [("traced.pt", "TorchScript"), ("program.pt2", "torch.export")])
def test_truncated_files_are_named_with_their_format(
    artefacts: dict[str, Path], tmp_path: Path, name: str, format_name: str
):
    damaged = tmp_path / name
    damaged.write_bytes(artefacts[name].read_bytes()[:2000])
    for serve in ("native", "onnx"):
        with pytest.raises(ConfigError) as info:
            forwardpass.load(damaged, serve=serve)
        message = str(info.value)
        assert str(damaged) in message and format_name in message and "\n" not in message


def test_auto_picks_an_engine_once_and_caches_it_beside_the_artefact(artefacts: dict[str, Path], tmp_path: Path):
    version = tmp_path / "repo" / "cnn" / "1"
    version.mkdir(parents=True)
    shutil.copy(artefacts["traced.pt"], version / "model.pt")
    first = forwardpass.load("cnn", repository=tmp_path / "repo", warmup=0)
    assert first.serving.mode == "auto" and first.serving.reason.startswith("auto: ")
    assert first.serving.engine in ("native", "onnx")
    assert first.serving.describe() == f"torchscript → {first.serving.engine} ({first.serving.reason})"
    cache = version / ".forwardpass" / "model.pt"
    assert {"model.onnx", "model.json", "auto.json"} <= {p.name for p in cache.iterdir()}
    converted_at = (cache / "model.onnx").stat().st_mtime_ns

    second = forwardpass.load("cnn", repository=tmp_path / "repo", warmup=0)
    assert (second.serving.engine, second.serving.reason) == (first.serving.engine, first.serving.reason)
    assert (cache / "model.onnx").stat().st_mtime_ns == converted_at
    assert forwardpass.Repository(tmp_path / "repo").versions("cnn") == [1]  # the cache is no model version

    torch.manual_seed(5)
    torch.jit.save(torch.jit.trace(SmallCNN().eval(), torch.randn(2, 3, 16, 16)), version / "model.pt")
    forwardpass.load("cnn", repository=tmp_path / "repo", serve="onnx", warmup=0)
    assert (cache / "model.onnx").stat().st_mtime_ns != converted_at  # a changed artefact is converted anew


def test_auto_serves_natively_when_the_conversion_misses_parity(artefacts: dict[str, Path], tmp_path: Path):
    folder = tmp_path / "repo" / "cnn"
    (folder / "1").mkdir(parents=True)
    shutil.copy(artefacts["traced.pt"], folder / "1" / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"source": {"tolerance": 1e-12}}))
    model = forwardpass.load("cnn", repository=tmp_path / "repo", warmup=0)
    assert model.serving.engine == "native"
    assert model.serving.reason.startswith("auto: conversion refused:") and "misses parity" in model.serving.reason
    cache = folder / "1" / ".forwardpass" / "model.pt"
    assert not (cache / "model.onnx").exists()
    again = forwardpass.load("cnn", repository=tmp_path / "repo", warmup=0)  # remembered: no second conversion
    assert (again.serving.engine, again.serving.reason) == ("native", model.serving.reason)


def test_shapes_for_inputs_the_model_lacks_are_refused(artefacts: dict[str, Path], tmp_path: Path):
    folder = tmp_path / "repo" / "cnn"
    (folder / "1").mkdir(parents=True)
    shutil.copy(artefacts["scripted.pt"], folder / "1" / "model.pt")
    inputs = [{"name": "pixels", "shape": [-1, 3, 16, 16]}]
    source = {"serve": "native", "inputs": inputs}
    (folder / "config.yaml").write_text(yaml.safe_dump({"source": source}))
    with pytest.raises(ConfigError, match=r"no shape for input 'image'"):
        forwardpass.load("cnn", repository=tmp_path / "repo")
    inputs.append({"name": "image", "shape": [-1, 3, 16, 16]})
    (folder / "config.yaml").write_text(yaml.safe_dump({"source": source}))
    with pytest.raises(ConfigError, match=r"no input named \['pixels'\]; its inputs are \['image'\]"):
        forwardpass.load("cnn", repository=tmp_path / "repo")


class NamedOutputs(nn.Module):
    """A dict of outputs: the TorchScript exporter fails on it (prim::DictConstruct), so it is served natively."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 2)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.body(features)
        return {"logits": logits, "probabilities": logits.softmax(dim=1)}


def test_the_graph_the_exporter_dumps_on_failing_stays_out_of_predicts_output(tmp_path: Path):
    """The dump went to stdout among --json's answers, then to stderr: 27 lines of TorchScript IR above the one line
    saying the model is served natively."""
    torch.manual_seed(3)
    module = NamedOutputs().eval()
    torch.jit.save(torch.jit.trace(module, torch.randn(2, 3), strict=False), tmp_path / "named.pt")
    rows = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    with torch.inference_mode():
        expected = module(torch.from_numpy(rows))["probabilities"].numpy()

    done = subprocess.run(
        [str(Path(sys.executable).parent / "forwardpass"), "predict", "named.pt", "rows.npy", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "named.pt: serving natively; auto: conversion refused: named.pt: torch.onnx cannot export this TorchScript "
        "model: Exporting the operator 'prim::DictConstruct' to ONNX opset version 17 is not supported"
    ]
    answers = [json.loads(line) for line in done.stdout.splitlines()]  # every line of stdout an answer
    got = np.array([answer["outputs"]["probabilities"] for answer in answers])
    assert np.abs(got - expected).max() <= ATOL


def test_a_program_that_takes_bfloat16_is_refused_at_load_with_the_fix(tmp_path: Path):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3).to(torch.bfloat16).eval()
    program = torch.export.export(net, (torch.zeros(2, 4, dtype=torch.bfloat16),))
    torch.export.save(program, str(tmp_path / "bf16.pt2"))
    with pytest.raises(ConfigError) as refused:
        forwardpass.load(tmp_path / "bf16.pt2", serve="native")
    assert str(refused.value) == (
        f"{tmp_path / 'bf16.pt2'}: input 'input' is BF16, which numpy cannot hold and no request can carry as such; "
        "export the model with an FP32 input and cast it inside (e.g. self.net(x.to(torch.bfloat16)).float())"
    )


def test_programs_opened_and_converted_in_parallel_threads_all_load(
    artefacts: dict[str, Path], held_out: tuple[np.ndarray, np.ndarray], tmp_path: Path
):
    """The server's registry opens a repository's models in threads: a second torch.export program read at the same
    time failed ("_CURRENT_DESERIALIZER is already set") and was not served; a second export to ONNX at the same time
    failed too ("GLOBALS.in_onnx_export must be False")."""
    jobs: list[tuple[Path, ServeMode]] = []
    for i in range(3):
        jobs.append((Path(shutil.copy(artefacts["program.pt2"], tmp_path / f"program{i}.pt2")), "native"))
        jobs.append((Path(shutil.copy(artefacts["traced.pt"], tmp_path / f"traced{i}.pt")), "onnx"))
    images, expected = held_out
    with ThreadPoolExecutor(len(jobs)) as pool:
        models = list(pool.map(lambda job: forwardpass.load(job[0], serve=job[1], warmup=0), jobs))
    for model, (_, serve) in zip(models, jobs, strict=True):
        assert model.serving.engine == serve
        assert_matches(model.infer({"image": images})["output"], expected)


def test_a_fresh_process_opens_torchscript_archives_in_parallel_threads(artefacts: dict[str, Path]):
    """The first import of torch, in a process that had none (`forwardpass serve`), happened in each of the registry's
    loading threads: where torchvision's C operators cannot load (a wheel for another torch variant), two threads
    defined their stand-ins at once and the second's RuntimeError ended the server at start-up."""
    code = (
        "import sys, forwardpass\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "with ThreadPoolExecutor(6) as pool:\n"
        "    list(pool.map(lambda _: forwardpass.load(sys.argv[1], serve='native', warmup=0), range(6)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(artefacts["traced.pt"])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
