"""Text detection, text-line preprocessing and CTC decoding against RapidOCR's own code (the package the bundled
`ocr` models come from), on the real PP-OCR models' outputs for scikit-image's page photo."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier
from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer
from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

import forwardpass
from forwardpass.config import CtcConfig, ImageConfig
from forwardpass.errors import ShapeError
from forwardpass.pipeline.geometry import TRANSFORM
from forwardpass.pipeline.image import ImagePreprocessor
from forwardpass.pipeline.ocr import CtcDecode, crop_quad, reading_order

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "samples" / "text" / "page.png"
MODELS = ROOT / "models"


@pytest.fixture(scope="module")
def page_bgr() -> np.ndarray:
    return cv2.cvtColor(np.asarray(Image.open(PAGE).convert("RGB")), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def detector() -> forwardpass.Model:
    return forwardpass.load("ocr_det")


def rapidocr_boxes(probability_map: np.ndarray, image_shape: tuple[int, int]) -> list[list[list[float]]]:
    """RapidOCR's TextDetector after the forward pass: DB boxes, ordered, clipped, small ones dropped, sorted."""
    from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector
    from rapidocr_onnxruntime.main import RapidOCR

    post = DBPostProcess(thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6, use_dilation=True)
    boxes, _ = post(probability_map, image_shape)
    kept = TextDetector.filter_tag_det_res(TextDetector.__new__(TextDetector), boxes, image_shape)
    return [box.tolist() for box in RapidOCR.sorted_boxes(kept)]


def test_text_boxes_equal_rapidocrs_on_the_same_map(detector: forwardpass.Model, page_bgr: np.ndarray) -> None:
    arrays = detector.preprocess(str(PAGE))
    expected_input = DetPreProcess(736, "min", [0.5] * 3, [0.5] * 3)(page_bgr)
    np.testing.assert_allclose(arrays["x"][None], expected_input, atol=1e-5)  # the same input, to float rounding
    (probability,) = detector.infer({"x": arrays["x"][None]}).values()
    found = detector.pipeline.postprocess({"sigmoid_0.tmp_0": probability[0]}, arrays, None)["boxes"]
    expected = rapidocr_boxes(probability, page_bgr.shape[:2])
    assert len(found) == len(expected) >= 5
    assert [box["points"] for box in found] == expected
    assert all(0.5 <= box["score"] <= 1 for box in found)


def test_text_boxes_map_back_through_the_resize(detector: forwardpass.Model) -> None:
    """The detector sees the page scaled up to 736 px on its short side; boxes come back in the page's pixels."""
    arrays = detector.preprocess(str(PAGE))
    transform = arrays[TRANSFORM]
    assert transform[2] > 1.5  # scaled up
    with Image.open(PAGE) as page:
        width, height = page.size
    for box in detector.predict(str(PAGE))["boxes"]:
        points = np.asarray(box["points"])
        assert (points >= 0).all() and (points[:, 0] < width).all() and (points[:, 1] < height).all()


def test_no_text_is_an_empty_list(detector: forwardpass.Model) -> None:
    assert detector.predict(Image.new("RGB", (200, 100), (255, 255, 255))) == {"boxes": []}


def test_reading_order_reads_a_line_left_to_right_then_the_next() -> None:
    boxes = [{"points": [[x, y]] * 4} for x, y in [(50, 5), (10, 8), (10, 40), (70, 38), (5, 100)]]
    assert [box["points"][0] for box in reading_order(boxes)] == [[10, 8], [50, 5], [10, 40], [70, 38], [5, 100]]


def crops(page_bgr: np.ndarray) -> list[np.ndarray]:
    found = forwardpass.load("ocr_det").predict(str(PAGE))["boxes"]
    return [crop_quad(page_bgr, np.asarray(box["points"], dtype=np.float32)) for box in found]


@pytest.mark.parametrize(("model", "shape"), [("ocr_cls", (3, 48, 192)), ("ocr_rec", (3, 48, 320))])
def test_text_lines_are_resized_and_padded_as_paddleocr_does(
    model: str, shape: tuple[int, ...], page_bgr: np.ndarray
) -> None:
    preprocess = forwardpass.load(model).preprocess
    reference = TextClassifier.__new__(TextClassifier)
    reference.cls_image_shape = list(shape)
    for crop in [*crops(page_bgr), page_bgr[:40, :90], page_bgr[:30, :30]]:
        rgb = Image.fromarray(np.ascontiguousarray(crop[:, :, ::-1]))
        expected = reference.resize_norm_img(crop) if model == "ocr_cls" else _rec_norm(crop, shape)
        np.testing.assert_allclose(preprocess(rgb)["x"], expected, atol=1e-6)


def _rec_norm(crop: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """RapidOCR's recognizer input for a line that is not the widest of its batch (the widest it squeezes by up to
    a pixel, to the batch width rounded down; forwardpass sizes every line alike), cut to the line's own width."""
    recognizer = TextRecognizer.__new__(TextRecognizer)
    recognizer.rec_image_shape = list(shape)
    width = max(shape[2], int(np.ceil(shape[1] * crop.shape[1] / crop.shape[0])))
    return recognizer.resize_norm_img(crop, (width + 0.5) / shape[1])[:, :, :width]


def test_ctc_decoding_equals_rapidocrs_on_the_recognizers_outputs(page_bgr: np.ndarray) -> None:
    model = forwardpass.load("ocr_rec")
    session = ort.InferenceSession(str(MODELS / "ocr_rec" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    characters = session.get_modelmeta().custom_metadata_map["character"].splitlines()
    reference = CTCLabelDecode(character=characters)
    for crop in crops(page_bgr):
        arrays = model.preprocess(Image.fromarray(np.ascontiguousarray(crop[:, :, ::-1])))
        scores = session.run(None, {"x": arrays["x"][None]})[0]
        ((text, score),) = reference(scores)
        decoded = model.pipeline.postprocess({"softmax_11.tmp_0": scores[0]}, arrays, None)
        assert decoded["text"] == text and len(text) > 5
        assert decoded["score"] == pytest.approx(score, abs=1e-7)
        assert [c["char"] for c in decoded["characters"]] == list(text)


def test_ctc_merges_repeats_drops_blanks_and_scores_each_character(tmp_path: Path) -> None:
    decode = CtcDecode(CtcConfig(kind="ctc", characters=["a", "b"], blank=0), "out", tmp_path)
    steps = [1, 1, 0, 1, 2, 2, 0, 0]  # a a _ a b b _ _ → "aab"
    scores = np.full((len(steps), 3), 0.1)
    scores[np.arange(len(steps)), steps] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    found = decode({"out": scores}, {})
    assert found["text"] == "aab"
    assert [c["score"] for c in found["characters"]] == [0.9, 0.6, 0.5]
    assert found["score"] == pytest.approx((0.9 + 0.6 + 0.5) / 3)
    assert decode({"out": np.eye(3)[[0, 0]]}, {}) == {"text": "", "score": 0.0, "characters": []}
    with pytest.raises(ShapeError, match="scores 5 classes, the characters make 3"):
        decode({"out": np.zeros((4, 5))}, {})


def test_characters_file_keeps_a_space_line(tmp_path: Path) -> None:
    (tmp_path / "chars.txt").write_text("a\n \nb\n", encoding="utf-8")
    decode = CtcDecode(CtcConfig(kind="ctc", characters="chars.txt"), "out", tmp_path)
    assert decode.classes == ["", "a", " ", "b"]


def test_lines_of_a_batch_are_padded_to_the_widest() -> None:
    config = ImageConfig(kind="image", text_line=(8, 16), text_line_overflow="extend", pad_value=255, scale=1.0)
    image = ImagePreprocessor(config, "x")
    narrow, wide = image(Image.new("RGB", (8, 8))), image(Image.new("RGB", (40, 8)))
    assert narrow["x"].shape == (3, 8, 16) and wide["x"].shape == (3, 8, 40)
    widened = image.widen([narrow, wide])
    assert widened[0]["x"].shape == (3, 8, 40)
    assert (widened[0]["x"][:, :, :8] == 0).all() and (widened[0]["x"][:, :, 8:] == 255).all()
