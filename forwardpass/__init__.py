"""forwardpass: run trained models on new data — load, preprocess, forward pass, postprocess, measure.

import forwardpass
model = forwardpass.load("mobilenet_v2")          # a repository name, a model folder or a model file
model.predict("samples/images/china.jpg")         # the whole pipeline: top-5 labels with scores
model.infer({"input": batch})                     # the forward pass alone
forwardpass.load_pipeline("ocr").predict("samples/text/page.png")  # a pipeline of models declared in config
"""

from forwardpass import errors
from forwardpass.config import ModelConfig
from forwardpass.ensemble import Ensemble, load_pipeline
from forwardpass.model import Model, load
from forwardpass.repository import Repository
from forwardpass.tensor import DataType, TensorSpec

__all__ = [
    "DataType",
    "Ensemble",
    "Model",
    "ModelConfig",
    "Repository",
    "TensorSpec",
    "errors",
    "load",
    "load_pipeline",
]
