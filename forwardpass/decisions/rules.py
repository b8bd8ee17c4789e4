"""Decision rules: the first rule whose bounds all hold gives the action, else the default.

Bounds say on which side a boundary value lands: `at_least: 0.9` fires at exactly 0.9, `above: 0.9` does not;
`at_most` and `below` likewise from the other side.
"""

from __future__ import annotations

from dataclasses import dataclass

from forwardpass.config import (
    AnomalyConfig,
    ClassificationConfig,
    ClusterConfig,
    DecisionConfig,
    DecisionRule,
    ModelConfig,
    RegressionConfig,
)
from forwardpass.errors import ConfigError
from forwardpass.pipeline import Prediction

__all__ = ["Decider", "Decision"]

# The prediction field each score reads, and the postprocessing that gives it.
_SOURCES: dict[str, type] = {
    "score": ClassificationConfig,
    "value": RegressionConfig,
    "anomaly_score": AnomalyConfig,
    "distance": ClusterConfig,
}


@dataclass(frozen=True, slots=True)
class Decision:
    action: str
    rule: str  # the rule that fired, as text ("P(malignant) >= 0.9 -> refer"), or "default -> allow"
    score: float  # the value the rule read (for the default: the value the last rule read)

    @property
    def named(self) -> tuple[str, str]:
        return self.action, self.rule


class Decider:
    def __init__(self, config: DecisionConfig, model: ModelConfig) -> None:
        expected = _SOURCES[config.score]
        if not isinstance(model.postprocess, expected):
            kind = model.postprocess.kind if model.postprocess else "none"
            raise ConfigError(f"decision.score '{config.score}' needs postprocess kind {expected.__name__}, not {kind}")
        labelled = [rule.label for rule in config.rules if rule.label is not None]
        if labelled and config.score != "score":
            raise ConfigError("decision.rules: 'label' reads a class probability; it needs score: score")
        self.config: DecisionConfig = config
        # rules that read classes beyond the top one: postprocessing must list every class
        self.reads_classes: bool = bool(labelled)
        self._rules: list[tuple[DecisionRule, str]] = [(rule, _describe(rule, config.score)) for rule in config.rules]

    def decide(self, prediction: Prediction) -> Decision:
        score = 0.0
        for rule, text in self._rules:
            score = self._score(prediction, rule)
            if _fires(rule, score):
                return Decision(rule.action, text, score)
        return Decision(self.config.default, f"default -> {self.config.default}", score)

    def _score(self, prediction: Prediction, rule: DecisionRule) -> float:
        if rule.label is not None:
            for entry in prediction["top_k"]:
                if entry["label"] == rule.label:
                    return float(entry["score"])
            raise ConfigError(f"decision.rules: the model has no class '{rule.label}'")
        value = prediction[self.config.score]
        if isinstance(value, list):
            raise ConfigError(f"decision.score '{self.config.score}': the model gives several values, not one")
        return float(value)


def _fires(rule: DecisionRule, score: float) -> bool:
    return (
        (rule.at_least is None or score >= rule.at_least)
        and (rule.above is None or score > rule.above)
        and (rule.at_most is None or score <= rule.at_most)
        and (rule.below is None or score < rule.below)
    )


def _describe(rule: DecisionRule, score: str) -> str:
    name = f"P({rule.label})" if rule.label is not None else score
    bounds = [
        f"{name} {sign} {bound:g}"
        for sign, bound in ((">=", rule.at_least), (">", rule.above), ("<=", rule.at_most), ("<", rule.below))
        if bound is not None
    ]
    return f"{' and '.join(bounds)} -> {rule.action}"
