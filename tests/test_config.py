"""ModelConfig: a valid file parses; every ConfigError is one line naming the file, the field and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

import forwardpass
from forwardpass.config import ClassificationConfig, ImageConfig, ModelConfig
from forwardpass.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_file(path)
    message = str(info.value)
    assert "\n" not in message, "messages are one line"
    assert str(path) in message, "messages name the file"
    return message


def test_a_full_config_parses(tmp_path: Path):
    path = write(
        tmp_path,
        """
description: a small CNN
max_batch_size: 8
inputs:
  - name: input
    allow_nonfinite: false
preprocess:
  kind: image
  resize: 256
  crop: [224, 200]
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
postprocess:
  kind: classification
  labels: [cat, dog]
  top_k: 2
engine:
  intra_op_threads: 1
  warmup: 0
""",
    )
    config = ModelConfig.from_file(path)
    assert config.max_batch_size == 8
    assert config.inputs[0].allow_nonfinite is False
    assert isinstance(config.preprocess, ImageConfig)
    assert config.preprocess.resize == 256
    assert config.preprocess.crop == (224, 200)
    assert isinstance(config.postprocess, ClassificationConfig)
    assert config.postprocess.labels == ["cat", "dog"]
    assert config.engine.intra_op_threads == 1


def test_an_empty_file_is_all_defaults(tmp_path: Path):
    config = ModelConfig.from_file(write(tmp_path, ""))
    assert config == ModelConfig()
    assert config.preprocess is None
    assert config.max_batch_size == 0


def test_unknown_top_level_field(tmp_path: Path):
    message = config_error(write(tmp_path, "max_batchsize: 4\n"))
    assert "'max_batchsize'" in message
    assert "did you mean 'max_batch_size'? else remove it" in message


def test_unknown_nested_field_is_named_as_the_file_spells_it(tmp_path: Path):
    """The YAML path is preprocess.colour; pydantic's tag level ('image') is not a level of the file."""
    message = config_error(write(tmp_path, "preprocess:\n  kind: image\n  colour: RGB\n"))
    assert "'preprocess.colour'" in message
    assert "did you mean 'color'? else remove it" in message


def test_unknown_engine_field(tmp_path: Path):
    message = config_error(write(tmp_path, "engine:\n  threads: 2\n"))
    assert "'engine.threads'" in message
    assert "remove it" in message


def test_wrong_type(tmp_path: Path):
    message = config_error(write(tmp_path, "max_batch_size: many\n"))
    assert "'max_batch_size'" in message
    assert "valid integer" in message
    assert "'many'" in message


def test_wrong_type_inside_a_union_field(tmp_path: Path):
    """resize is `int | [h, w]`: the message names preprocess.resize, not pydantic's internal 'image'/'int' levels."""
    message = config_error(write(tmp_path, "preprocess:\n  kind: image\n  resize: big\n"))
    assert "'preprocess.resize'" in message
    assert "'big'" in message


def test_out_of_range_value(tmp_path: Path):
    message = config_error(write(tmp_path, "engine:\n  warmup: -1\n"))
    assert "'engine.warmup'" in message
    assert "greater than or equal to 0" in message


def test_missing_required_field(tmp_path: Path):
    message = config_error(write(tmp_path, "inputs:\n  - datatype: FP32\n"))
    assert "'inputs.0.name'" in message
    assert "add it" in message


@pytest.mark.parametrize(
    ("section", "kinds"),
    [("preprocess", ["image", "text", "tabular"]), ("postprocess", ["classification", "regression", "embedding"])],
)
def test_unknown_kind_lists_the_kinds(tmp_path: Path, section: str, kinds: list[str]):
    message = config_error(write(tmp_path, f"{section}:\n  kind: video\n"))
    assert f"'{section}'" in message
    assert "'video'" in message
    assert "set kind to one of" in message
    for kind in kinds:
        assert f"'{kind}'" in message


@pytest.mark.parametrize(
    ("section", "kinds"),
    [("preprocess", ["image", "text", "tabular"]), ("postprocess", ["classification", "regression", "embedding"])],
)
def test_missing_kind_lists_the_kinds(tmp_path: Path, section: str, kinds: list[str]):
    message = config_error(write(tmp_path, f"{section}:\n  resize: 3\n"))
    assert f"'{section}'" in message
    assert "kind" in message
    for kind in kinds:
        assert kind in message


def test_model_validator_message(tmp_path: Path):
    text = "preprocess:\n  kind: tabular\n  columns:\n    - name: age\n      transform: standard\n      std: 0\n"
    message = config_error(write(tmp_path, text))
    assert "preprocess.columns.0" in message
    assert "std must not be 0" in message


def test_invalid_yaml_names_the_line(tmp_path: Path):
    message = config_error(write(tmp_path, "description: ok\npreprocess:\n  kind: image\n   resize: [1, 2\n"))
    assert "not valid YAML" in message
    assert "line 4" in message
    assert "fix the syntax" in message


def test_a_python_tag_is_named_and_never_built(tmp_path: Path):
    """A !!python/object tag was reported as "not valid YAML; fix the syntax": the YAML is valid, the tag refused."""
    marker = tmp_path / "ran"
    message = config_error(write(tmp_path, f'description: !!python/object/apply:os.system ["touch {marker}"]\n'))
    assert "line 1 uses the YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'" in message
    assert "never loaded; plain YAML only" in message and not marker.exists()


@pytest.mark.parametrize("text", ["- kind: image\n- kind: text\n", "just a sentence\n", "42\n"])
def test_non_mapping_top_level(tmp_path: Path, text: str):
    message = config_error(write(tmp_path, text))
    assert "mapping" in message
    assert "top level" in message


def billion_laughs(field: str) -> str:
    """`field` set to nine levels of aliases, each repeating the one below ten times: 10**9 values in 300 bytes."""
    levels = [f"  l0: &l0 [{', '.join(['1'] * 10)}]"]
    levels += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    return "constants:\n" + "\n".join(levels) + f"\n{field}: *l8\n"


@pytest.mark.parametrize("field", ["max_batch_size", "description"])
def test_yaml_aliases_expanding_to_a_billion_values_are_refused(tmp_path: Path, field: str):
    """Refused before validation walks them (list[Any] under constants took them all; numpy at load ran out of
    memory) and before an error message repeats them."""
    message = config_error(write(tmp_path, billion_laughs(field)))
    assert "more than 1,000,000 values" in message and "aliases" in message


def test_a_yaml_alias_containing_itself_is_refused(tmp_path: Path):
    message = config_error(write(tmp_path, "constants:\n  sr: &loop [1, *loop]\n"))
    assert "nested more than 64 levels deep (a YAML alias containing itself?)" in message


@pytest.mark.parametrize(("depth", "problem"), [(100, "nested more than 64 levels"), (5000, "not valid YAML")])
def test_deep_nesting_is_refused(tmp_path: Path, depth: int, problem: str):
    """libyaml itself stops at 1000 levels; below that the walk does."""
    assert problem in config_error(write(tmp_path, "constants:\n  sr: " + "[" * depth + "1" + "]" * depth + "\n"))


def test_a_wrong_value_is_shown_in_short(tmp_path: Path):
    message = config_error(write(tmp_path, f"max_batch_size: {list(range(10_000))}\n"))
    assert "got [0, 1, 2, 3, 4, 5, 6, 7, ...]" in message and len(message) < 300


def test_a_config_over_4_mib_is_refused_unparsed(tmp_path: Path):
    """11 MiB of inline labels took 6 s and 460 MB to parse, on every load and reload."""
    labels = ", ".join(f"class_{i}" for i in range(400_000))
    message = config_error(write(tmp_path, f"postprocess: {{kind: classification, labels: [{labels}]}}\n"))
    assert "is over 4 MiB; keep long lists in a file the config names" in message


def test_a_config_that_is_not_utf8_is_named(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_bytes("description: caf\u00e9\n".encode("latin-1"))
    assert "is not UTF-8 text" in config_error(path)


@pytest.mark.parametrize(
    ("text", "field", "meant"),
    [
        ("max_batch_sise: 8\n", "max_batch_sise", "max_batch_size"),
        ("engine: {intra_op_thread: 1}\n", "engine.intra_op_thread", "intra_op_threads"),
        ("postprocess: {kind: classification, lables: [a]}\n", "postprocess.lables", "labels"),
        ("preprocess: {kind: tabular, columns: [{name: a, transfrom: none}]}\n", "preprocess.columns.0.transfrom",
         "transform"),
    ],
)  # fmt: skip
def test_a_misspelt_key_is_refused_with_the_field_it_is_closest_to(tmp_path: Path, text: str, field: str, meant: str):
    message = config_error(write(tmp_path, text))
    assert f"field '{field}': Extra inputs are not permitted; did you mean '{meant}'? else remove it" in message


def test_an_unknown_key_near_no_field_is_refused_by_name(tmp_path: Path):
    message = config_error(write(tmp_path, "response_cache: {enable: true}\n"))
    assert "field 'response_cache': Extra inputs are not permitted; remove it or check its spelling" in message


def test_unreadable_file(tmp_path: Path):
    folder = tmp_path / "config.yaml"
    folder.mkdir()
    message = config_error(folder)
    assert "cannot read" in message


def test_from_dict_names_its_source():
    with pytest.raises(ConfigError, match=r"^inline: field 'precision'"):
        ModelConfig.from_dict({"precision": "fp8"}, source="inline")


def test_load_reports_the_config_beside_the_versions(tmp_path: Path, add_model):
    add_model(tmp_path / "adder" / "1" / "model.onnx")
    config = write(tmp_path / "adder", "postprocess:\n  kind: classification\n  top_k: 0\n")
    with pytest.raises(ConfigError) as info:
        forwardpass.load("adder", repository=tmp_path)
    assert str(config) in str(info.value)
    assert "top_k" in str(info.value)


def test_engine_keyword_options_are_validated(tmp_path: Path, add_model):
    add_model(tmp_path / "adder" / "1" / "model.onnx")
    with pytest.raises(ConfigError, match="intra_op_threads"):
        forwardpass.load("adder", repository=tmp_path, intra_op_threads=-1)
    with pytest.raises(ConfigError, match="turbo"):
        forwardpass.load("adder", repository=tmp_path, turbo=True)


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"outputs": [{"name": "y", "max_shape": [-1, 8]}]}, "outputs"),
        ({"source": {"inputs": [{"name": "x", "max_shape": [-1, 8]}]}}, "source.inputs"),
    ],
)
def test_max_shape_anywhere_but_inputs_is_refused(section: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"{field}\[\]\.max_shape bounds nothing there; write it under inputs"):
        ModelConfig.from_dict(section)


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("std: [0.0]", "std divides each channel: finite and non-zero, got [0.0]"),
        ("std: [1.0, .nan, 1.0]", "std divides each channel"),
        ("mean: [.inf]", "mean must be finite, got [inf]"),
        ("scale: .nan", "scale must be finite, got nan"),
        ("pad_value: -.inf", "pad_value must be finite, got -inf"),
        ("scale: 0", "scale 0 makes every image the same"),
        ("resize: [100000, 100000]", "resize (100000, 100000) makes images of over max_pixels (50000000)"),
        ("letterbox: [10000, 5001]", "letterbox (10000, 5001) makes images of over max_pixels (50000000)"),
    ],
)
def test_image_settings_that_answer_no_image_rightly_are_refused(tmp_path: Path, setting: str, problem: str):
    """Each was loaded and answered every image with NaN scores, or the same scores (scale 0), exit 0; or refused
    every image at predict (a size over max_pixels)."""
    message = config_error(write(tmp_path, f"preprocess:\n  kind: image\n  {setting}\n"))
    assert "preprocess" in message and problem in message


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("scale: 0.00392156862745098", "pixel values 0-255 become 0.0 to 1.0 in fractions"),
        ("scale: 1.0\n  mean: [0.5]\n  std: [0.25]", "pixel values 0-255 become -2.0 to 1018.0"),
        ("scale: 1.0\n  mean: [128]", "pixel values 0-255 become -128.0 to 127.0"),
        ("scale: 2.0", "pixel values 0-255 become 0.0 to 510.0"),
    ],
)
def test_integer_pixels_that_scaling_leaves_fractional_or_out_of_range_are_refused(
    tmp_path: Path, setting: str, problem: str
):
    """A UINT8 input took the scaled values cast as numpy casts: scale 1/255 gave every image as 0s and 1s, and a
    mean and std wrapped past 255, each answered with exit 0."""
    message = config_error(write(tmp_path, f"preprocess:\n  kind: image\n  datatype: UINT8\n  {setting}\n"))
    assert "field 'preprocess'" in message and f"{problem}, which UINT8 does not hold" in message


@pytest.mark.parametrize(
    ("datatype", "setting"),
    [("UINT8", "scale: 1.0"), ("INT8", "scale: 1.0\n  mean: [128]"), ("INT32", "scale: 255.0\n  mean: [1, 2, 3]")],
)
def test_integer_pixels_that_scaling_keeps_whole_and_in_range_are_accepted(tmp_path: Path, datatype: str, setting: str):
    path = write(tmp_path, f"preprocess:\n  kind: image\n  datatype: {datatype}\n  {setting}\n")
    assert ModelConfig.from_file(path).preprocess is not None


def test_a_version_policy_on_a_pipeline_is_refused(tmp_path: Path):
    """It was accepted and ignored: the steps' versions were served whatever it said."""
    text = "pipeline:\n  steps:\n  - {model: det}\n  - {model: rec, input: crops}\nversion_policy: {latest: 1}\n"
    assert "version_policy chooses a model's versions; a pipeline has none" in config_error(write(tmp_path, text))
