"""A ResNet-style CNN trained on scikit-learn's digits (real data a package ships), upsampled by the model's own
preprocessing, exported to ONNX in a model repository with a held-out ImageFolder. Shared by the tests (tiny) and
bench/precision.py (larger)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from forwardpass.formats.torch import import_torch

SEED = 0


@dataclass(frozen=True)
class DigitsData:
    train: Path  # ImageFolder: <label>/<index>.png
    test: Path


def write_digits(root: Path, *, limit_train: int | None = None) -> DigitsData:
    """scikit-learn's 8x8 digits as PNG ImageFolders: every 4th image held out (stratified enough at 1797 items)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = DigitsData(root / "train", root / "test")
    train_count = 0
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        held_out = index % 4 == 0
        if not held_out:
            if limit_train is not None and train_count >= limit_train:
                continue
            train_count += 1
        path = (data.test if held_out else data.train) / str(label) / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(image * 255.0 / 16.0).astype(np.uint8)).save(path)
    return data


def _load_folder(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """What the image pipeline makes of each PNG (grayscale, bilinear resize, /255), with labels."""
    arrays, labels = [], []
    for path in sorted(folder.rglob("*.png")):
        with Image.open(path) as image:
            resized = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(resized, dtype=np.float32)[None] / np.float32(255.0))
        labels.append(int(path.parent.name))
    return np.stack(arrays), np.asarray(labels)


def build_resnet(
    repository: Path, data: DigitsData, *, name: str, size: int, width: int, stages: int, epochs: int
) -> Path:
    """Train a ResNet-style CNN (stem, `stages` residual stages doubling the width, global pool, linear) and write
    `<repository>/<name>/1/model.onnx` + config.yaml + labels.txt. Returns the model folder."""
    torch = import_torch()
    nn = torch.nn
    torch.manual_seed(SEED)

    class Block(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, inputs: int, outputs: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(outputs)
            self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(outputs)
            self.skip = (
                nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
                if stride != 1 or inputs != outputs
                else nn.Identity()
            )

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))

    layers: list[Any] = [nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    channels = width
    for stage in range(stages):
        out = width * 2**stage
        layers.append(Block(channels, out, 1 if stage == 0 else 2))
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    model = nn.Sequential(*layers)

    x, y = _load_folder(data.train, size)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    # Short training leaves BatchNorm's running statistics behind the weights: recompute them exactly.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the passes below
        for start in range(0, len(inputs), 256):
            model(inputs[start : start + 256])
    model.eval()

    folder = repository / name
    (folder / "1").mkdir(parents=True)
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, size, size),),
        str(folder / "1" / "model.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    (folder / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    config = {
        "max_batch_size": 64,
        "preprocess": {"kind": "image", "color": "L", "resize": [size, size], "mean": [0.0], "std": [1.0]},
        "postprocess": {"kind": "classification", "labels": "labels.txt", "top_k": 3},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder
