"""Explanations on request: SHAP attributions per feature for tabular models, occlusion saliency for image models."""

from forwardpass.explain.explainer import explain
from forwardpass.explain.image import occlusion_saliency, saliency_png
from forwardpass.explain.tabular import shap_attributions

__all__ = ["explain", "occlusion_saliency", "saliency_png", "shap_attributions"]
