"""Decision rules: the first rule whose bounds all hold gives the action, else the default.

Bounds say on which side a boundary value lands: `at_least: 0.9` fires at exactly 0.9, `above: 0.9` does not;
`at_most` and `below` likewise from the other side.

Rules that cannot be right are refused at load: a rule no score can fire (its bounds exclude each other, or lie
outside the score's range, such as a probability `at_least: 90`; a classifier's decision scores have no range), a
rule that earlier rules reading the same score always fire before (`>= 0.5 -> review` ahead of `>= 0.9 -> block`),
and a class the model does not have. A score that is NaN meets no bound: that item is refused, never given the
default action.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
from forwardpass.errors import ConfigError, InputError
from forwardpass.pipeline import Prediction
from forwardpass.tensor import TensorSpec

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
    def __init__(
        self,
        config: DecisionConfig,
        model: ModelConfig,
        labels: Sequence[str] | None = None,
        scored: TensorSpec | None = None,
    ) -> None:
        """`labels`: the classifier's class names, where known (rules naming another class are refused); `scored`:
        one item's spec of the output the score comes from, where known (a classifier without names has its
        classes named by index; a regression of several values gives no one value to read)."""
        expected = _SOURCES[config.score]
        if not isinstance(model.postprocess, expected):
            kind = model.postprocess.kind if model.postprocess else "none"
            raise ConfigError(f"decision.score '{config.score}' needs postprocess kind {expected.__name__}, not {kind}")
        labelled = [rule.label for rule in config.rules if rule.label is not None]
        if labelled and config.score != "score":
            raise ConfigError("decision.rules: 'label' reads a class probability; it needs score: score")
        width = math.prod(scored.shape) if scored is not None and -1 not in scored.shape else None
        if config.score == "value" and scored is not None and width is not None and width > 1:
            raise ConfigError(
                f"decision.score 'value': output '{scored.name}' gives {width} values an item ({list(scored.shape)}); "
                "a rule reads one"
            )
        if labels is None and expected is ClassificationConfig and width is not None:
            labels = [str(index) for index in range(max(width, 2))]  # as predictions name them; one score is binary
        unknown = [label for label in labelled if labels is not None and label not in labels]
        if unknown:
            raise ConfigError(
                f"decision.rules: the model has no class '{unknown[0]}'; its classes are {list(labels or [])}"
            )
        _check_every_rule_can_fire(config, _score_range(model))
        self.config: DecisionConfig = config
        # the classes rules read, beyond the top one: postprocessing must list every class, and the audit these
        self.read_classes: frozenset[str] = frozenset(labelled)
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
            value = next((entry["score"] for entry in prediction["top_k"] if entry["label"] == rule.label), None)
            if value is None:
                raise ConfigError(f"decision.rules: the model has no class '{rule.label}'")
        else:
            value = prediction[self.config.score]
        if isinstance(value, list):
            raise ConfigError(f"decision.score '{self.config.score}': the model gives several values, not one")
        score = float(value)
        if math.isnan(score):  # compares false with every bound: the default would be given to what was not judged
            name = f"P({rule.label})" if rule.label is not None else self.config.score
            raise InputError(f"{name} is NaN: no decision rule can judge it")
        return score


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


# An interval of scores: (low, low included, high, high included). Infinite ends are never included.
_Interval = tuple[float, bool, float, bool]


def _score_range(model: ModelConfig) -> _Interval:
    """The values the decision's score can take: a classifier's are probabilities (as `score` and `label` read
    them; a model that gives logits takes `activation: softmax`) unless it answers decision scores (margins, any
    real number), a cluster's distances are from 0."""
    post = model.postprocess
    if isinstance(post, ClassificationConfig) and post.activation != "decision":
        return (0.0, True, 1.0, True)
    if isinstance(post, ClusterConfig):
        return (0.0, True, math.inf, False)
    return (-math.inf, False, math.inf, False)


def _interval(rule: DecisionRule) -> _Interval:
    low, low_in, high, high_in = -math.inf, False, math.inf, False
    for bound, included in ((rule.at_least, True), (rule.above, False)):
        if bound is not None and (bound > low or (bound == low and not included)):
            low, low_in = bound, included
    for bound, included in ((rule.at_most, True), (rule.below, False)):
        if bound is not None and (bound < high or (bound == high and not included)):
            high, high_in = bound, included
    return low, low_in, high, high_in


def _empty(interval: _Interval) -> bool:
    low, low_in, high, high_in = interval
    return low > high or (low == high and not (low_in and high_in))


def _meet(a: _Interval, b: _Interval) -> _Interval:
    low, low_in = max((a[0], not a[1]), (b[0], not b[1]))  # the higher low end; at a tie, the excluding one
    high, high_in = min((a[2], a[3]), (b[2], b[3]))  # the lower high end; at a tie, the excluding one
    return low, not low_in, high, high_in


def _without(a: _Interval, b: _Interval) -> list[_Interval]:
    """The parts of `a` outside `b`: below its low end, above its high end."""
    below = _meet(a, (-math.inf, False, b[0], not b[1]))
    above = _meet(a, (b[2], not b[3], math.inf, False))
    return [part for part in (below, above) if not _empty(part)]


def _check_every_rule_can_fire(config: DecisionConfig, score_range: _Interval) -> None:
    """Refuses a rule that no score reaches: empty bounds, outside the score's range, or taken by earlier rules
    that read the same score (the first rule that fires wins)."""
    for index, rule in enumerate(config.rules):
        where = f"decision.rules[{index}] ({_describe(rule, config.score)})"
        own = _meet(_interval(rule), score_range)
        if _empty(_interval(rule)):
            raise ConfigError(f"{where} can never fire: no score meets all of its bounds")
        if _empty(own):
            low, _, high, _ = score_range
            raise ConfigError(f"{where} can never fire: its score lies between {low:g} and {high:g}")
        left = [own]
        earlier = [other for other in config.rules[:index] if other.label == rule.label]
        for other in earlier:
            left = [part for piece in left for part in _without(piece, _interval(other))]
        if not left:
            taken = "; ".join(_describe(other, config.score) for other in earlier)
            raise ConfigError(
                f"{where} can never fire: every score it takes fires an earlier rule first ({taken}); "
                "rules are tried in order, so put the narrower one first"
            )
