"""Drawing answers on images: boxes where the answer says, text boxes as polygons, nothing to draw refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from forwardpass.errors import InputError
from forwardpass.pipeline.draw import draw


def test_a_detection_box_is_drawn_where_it_was_found() -> None:
    found = {"detections": [{"box": [10.0, 20.0, 60.0, 50.0], "score": 0.9, "label": "cat", "index": 0}]}
    pixels = np.asarray(draw(Image.new("RGB", (100, 80), "black"), found))
    assert pixels[35, 10].any() and pixels[35, 60].any()  # the left and right edges, half way down
    assert not pixels[35, 35].any() and not pixels[70, 90].any()  # inside and outside stay black


def test_text_boxes_and_regions_are_drawn_as_polygons() -> None:
    quad = [[10, 10], [80, 14], [80, 30], [10, 26]]
    for found in ({"boxes": [{"points": quad, "score": 0.8}]}, {"regions": [{"points": quad, "text": "hi"}]}):
        pixels = np.asarray(draw(Image.new("RGB", (100, 60), "black"), found))
        assert pixels[18, 80].any() and not pixels[50, 50].any()


def test_nothing_found_leaves_the_image_as_it_was() -> None:
    image = Image.new("RGB", (30, 20), "gray")
    assert np.array_equal(np.asarray(draw(image, {"detections": []})), np.asarray(image))


def test_an_answer_without_boxes_is_refused() -> None:
    with pytest.raises(InputError, match="--draw draws boxes"):
        draw(Image.new("RGB", (10, 10)), {"label": "cat", "score": 0.9, "top_k": []})
