"""Decision rules: boundary values on their documented side, the cost-based threshold, and one audit row per
prediction through the Python API."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

import forwardpass
from forwardpass.config import DecisionConfig, ModelConfig
from forwardpass.decisions import AuditLog, Decider, choose_threshold
from forwardpass.errors import ConfigError, InputError, SchemaError

RECORD = {"mean radius": 14.0, "mean texture": 19.0, "mean smoothness": 0.1, "mean concavity": 0.09}


def decider(decision: dict[str, Any], postprocess: dict[str, Any] | None = None) -> Decider:
    config = ModelConfig.from_dict(
        {"postprocess": postprocess or {"kind": "classification", "labels": ["fraud", "fine"]}, "decision": decision}
    )
    assert config.decision is not None
    return Decider(config.decision, config)


def classified(fraud: float) -> dict[str, Any]:
    ranked = sorted([("fraud", 0, fraud), ("fine", 1, 1 - fraud)], key=lambda entry: -entry[2])
    top_k = [{"label": label, "index": index, "score": score} for label, index, score in ranked]
    return {**top_k[0], "top_k": top_k}


FRAUD_RULES = {
    "rules": [
        {"label": "fraud", "at_least": 0.9, "action": "block"},
        {"label": "fraud", "at_least": 0.5, "action": "review"},
    ],
    "default": "allow",
}


@pytest.mark.parametrize(
    ("fraud", "action"),
    [
        (0.9, "block"),  # at_least: the boundary itself fires
        (float(np.nextafter(0.9, 0.0)), "review"),
        (0.5, "review"),
        (float(np.nextafter(0.5, 0.0)), "allow"),
        (1.0, "block"),
        (0.0, "allow"),
    ],
)
def test_at_least_boundaries(fraud, action):
    decision = decider(FRAUD_RULES).decide(classified(fraud))
    assert decision.action == action
    assert decision.score == fraud
    assert decision.rule.endswith(f"-> {action}")


@pytest.mark.parametrize(
    ("value", "action"),
    [(100.0, "normal"), (float(np.nextafter(100.0, 200.0)), "high"), (10.0, "normal"), (9.99, "low")],
)
def test_strict_bounds_exclude_the_boundary(value, action):
    rules = {
        "score": "value",
        "rules": [{"above": 100, "action": "high"}, {"below": 10, "action": "low"}],
        "default": "normal",
    }
    assert decider(rules, {"kind": "regression"}).decide({"value": value}).action == action


def test_rule_text_names_the_class_and_bound():
    decision = decider(FRAUD_RULES).decide(classified(0.95))
    assert decision.rule == "P(fraud) >= 0.9 -> block"
    assert decider(FRAUD_RULES).decide(classified(0.1)).rule == "default -> allow"


def test_decision_config_is_checked():
    with pytest.raises(ConfigError, match="needs postprocess kind RegressionConfig"):
        decider({"score": "value", "rules": [{"at_least": 1, "action": "x"}], "default": "y"})
    with pytest.raises(ConfigError, match="needs a bound"):
        ModelConfig.from_dict({"decision": {"rules": [{"action": "x"}], "default": "y"}})
    with pytest.raises(ConfigError, match="no class 'nope'"):
        decider({"rules": [{"label": "nope", "at_least": 0.5, "action": "x"}], "default": "y"}).decide(classified(0.5))


@pytest.mark.parametrize(
    ("rules", "postprocess", "refusal"),
    [
        (  # the fraud team's classic: the wider rule first, so 'block' is never given
            [
                {"label": "fraud", "at_least": 0.5, "action": "review"},
                {"label": "fraud", "at_least": 0.9, "action": "block"},
            ],
            None,
            r"rules\[1\] \(P\(fraud\) >= 0.9 -> block\) can never fire: every score it takes fires an earlier rule "
            r"first \(P\(fraud\) >= 0.5 -> review\)",
        ),
        (  # two earlier rules together leave it nothing; the boundary 0.5 itself is the first rule's
            [
                {"label": "fraud", "at_least": 0.5, "action": "review"},
                {"label": "fraud", "below": 0.5, "action": "allow"},
                {"label": "fraud", "at_least": 0.5, "at_most": 0.5, "action": "block"},
            ],
            None,
            r"rules\[2\] .* can never fire: every score it takes fires an earlier rule first",
        ),
        (
            [{"label": "fraud", "at_least": 0.9, "below": 0.5, "action": "block"}],
            None,
            "no score meets all of its bounds",
        ),
        (
            [{"label": "fraud", "above": 0.9, "at_most": 0.9, "action": "block"}],
            None,
            "no score meets all of its bounds",
        ),
        (  # a percentage where the score is a probability
            [{"label": "fraud", "at_least": 90, "action": "block"}],
            None,
            r"rules\[0\] \(P\(fraud\) >= 90 -> block\) can never fire: its score lies between 0 and 1",
        ),
        (
            [{"below": 0, "action": "x"}],
            {"kind": "cluster"},
            "can never fire: its score lies between 0 and inf",
        ),
    ],
)
def test_a_rule_that_can_never_fire_is_refused(rules, postprocess, refusal):
    with pytest.raises(ConfigError, match=refusal):
        decider(
            {
                "score": "distance" if postprocess == {"kind": "cluster"} else "score",
                "rules": rules,
                "default": "allow",
            },
            postprocess,
        )


def test_rules_that_leave_each_other_scores_are_kept():
    rules = [
        {"label": "fraud", "above": 0.5, "action": "review"},
        {"label": "fraud", "below": 0.5, "action": "allow"},
        {"label": "fraud", "at_least": 0.5, "at_most": 0.5, "action": "block"},  # 0.5 itself is left to it
        {"label": "fine", "at_least": 0.99, "action": "fast"},  # another class's score: not shadowed by fraud's
    ]
    assert decider({"rules": rules, "default": "allow"}).decide(classified(0.5)).action == "block"


@pytest.mark.parametrize("bound", [float("nan"), float("inf"), float("-inf")])
def test_a_bound_that_is_not_a_finite_number_is_refused(bound):
    with pytest.raises(ConfigError, match=f"rule 'block': at_least {bound} is not a finite number"):
        ModelConfig.from_dict({"decision": {"rules": [{"at_least": bound, "action": "block"}], "default": "allow"}})


def test_a_rule_naming_a_class_the_model_lacks_is_refused_at_load(tasks, tmp_path):
    folder = Path(shutil.copytree(tasks.root / "triage", tmp_path / "repo" / "triage"))
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["decision"]["rules"][0]["label"] = "malignnat"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"no class 'malignnat'; its classes are \['malignant', 'benign'\]"):
        forwardpass.load("triage", repository=tmp_path / "repo")


def test_a_nan_score_is_refused_never_given_the_default(audit_log, tmp_path):
    """A model that answers NaN for a finite input (here log(x) for x < 0): no rule can judge the item, so it is
    refused, neither given the default action nor audited; its neighbours are decided as ever."""
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["value"])],
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch", 1])],
    )
    (tmp_path / "log" / "1").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "log/1/model.onnx")
    config = {
        "preprocess": {"kind": "tabular", "columns": [{"name": "x"}]},
        "postprocess": {"kind": "regression"},
        "decision": {"score": "value", "rules": [{"above": 1, "action": "high"}], "default": "low"},
    }
    (tmp_path / "log" / "config.yaml").write_text(yaml.safe_dump(config))
    model = forwardpass.load("log", repository=tmp_path)
    outcomes = model.predict_each([{"x": -1.0}, {"x": 10.0}])
    assert isinstance(outcomes[0], InputError)
    assert str(outcomes[0]).startswith("the model answered NaN in 'value' for this item")  # before any rule reads it
    assert isinstance(outcomes[1], dict) and outcomes[1]["action"] == "high"
    assert [row.action for row in AuditLog(audit_log).query()] == ["high"]
    model.close()


def test_cost_based_threshold():
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8, 0.95])
    positives = np.array([0, 0, 1, 0, 1, 0, 1, 1], dtype=bool)
    # a missed positive costs 10 false alarms: act from the lowest positive score on
    cheap_alarms = choose_threshold(scores, positives, false_positive_cost=1, false_negative_cost=10)
    assert cheap_alarms.threshold == 0.35
    assert (cheap_alarms.false_positives, cheap_alarms.false_negatives, cheap_alarms.cost) == (2, 0, 2.0)
    # false alarms cost 10 times a miss: act only where no negative lies at or above
    costly_alarms = choose_threshold(scores, positives, false_positive_cost=10, false_negative_cost=1)
    assert costly_alarms.threshold == 0.8
    assert costly_alarms.cost == 2.0
    never = choose_threshold(scores, np.zeros(8, dtype=bool), false_positive_cost=1, false_negative_cost=1)
    assert never.threshold == np.inf and never.cost == 0


@pytest.mark.parametrize(
    ("scores", "costs", "refusal"),
    [
        ([0.2, np.nan, 0.8], (1.0, 1.0), "scores must be finite numbers: 1 are not"),
        ([0.2, np.inf, 0.8], (1.0, 1.0), "scores must be finite numbers: 1 are not"),
        ([0.2, 0.5, 0.8], (np.nan, 1.0), "costs must be finite numbers, not negative"),
        ([0.2, 0.5, 0.8], (1.0, -1.0), "costs must be finite numbers, not negative"),
    ],
)
def test_a_threshold_is_not_chosen_from_scores_or_costs_that_are_not_numbers(scores, costs, refusal):
    """A NaN score counted as a positive never acted on, and a NaN cost ended in an IndexError."""
    with pytest.raises(InputError, match=refusal):
        choose_threshold(
            np.array(scores),
            np.array([False, True, True]),
            false_positive_cost=costs[0],
            false_negative_cost=costs[1],
        )


def test_every_prediction_carries_its_action_and_one_audit_row(tasks, audit_log):
    model = forwardpass.load("triage", repository=tasks.root)
    records = [dict(RECORD, **{"mean radius": radius}) for radius in (8.0, 14.0, 15.5, 25.0, 11.0)]
    predictions = model.predict(records)
    reference = tasks.estimators["triage"]
    assert all(p["action"] in ("refer", "review", "routine") for p in predictions)
    rows = list(AuditLog(audit_log).query())
    assert len(rows) == len(records)
    x = np.array([[r[c] for c in RECORD] for r in records])
    mean, std = tasks.data["triage"].mean(axis=0), tasks.data["triage"].std(axis=0)
    malignant = reference.predict_proba(((x - mean) / std).astype(np.float32))[:, 0]
    expected = ["refer" if p >= 0.9 else "review" if p >= 0.5 else "routine" for p in malignant]
    margin = np.minimum(np.abs(malignant - 0.9), np.abs(malignant - 0.5)) > 1e-5
    assert margin.all()
    assert [p["action"] for p in predictions] == expected
    assert [row.action for row in rows] == expected
    assert {row.model for row in rows} == {"triage"} and {row.version for row in rows} == {"1"}
    assert [row.rule for row in rows] == [p["rule"] for p in predictions]
    assert len({row.input_hash for row in rows}) == len(records)
    assert len(predictions[0]["top_k"]) == 1  # every class was read for the rules, the config's top_k is shown
    for row, prediction, probability in zip(rows, predictions, malignant, strict=True):  # and the score read, audited
        assert row.scores["top_k"][:1] == prediction["top_k"]
        read = {entry["label"]: entry["score"] for entry in row.scores["top_k"]}
        assert read["malignant"] == pytest.approx(probability, abs=1e-6)
    model.predict(records[0])
    again = list(AuditLog(audit_log).query())
    assert len(again) == len(records) + 1 and again[-1].input_hash == rows[0].input_hash
    model.close()


def test_a_refused_input_makes_no_decision(tasks, audit_log):
    model = forwardpass.load("triage", repository=tasks.root)
    outcomes = model.predict_each([dict(RECORD, **{"mean radius": 80.0}), RECORD])
    assert isinstance(outcomes[0], SchemaError)
    assert str(outcomes[0]) == "field 'mean radius': 80.0 is above the maximum 50 (rule: max)"
    assert isinstance(outcomes[1], dict) and outcomes[1]["action"] == "routine"
    assert [row.action for row in AuditLog(audit_log).query()] == ["routine"]
    model.close()


def test_audit_queries_filter_by_model_action_and_time(tmp_path):
    from forwardpass.decisions import AuditRecord

    log = AuditLog(tmp_path / "a.sqlite")
    log.write([AuditRecord("2026-01-01T00:00:00.000000Z", "m", "1", "h1", {"score": 0.1}, "allow", "default -> allow")])
    log.write(
        [
            AuditRecord(
                "2026-01-02T00:00:00.000000Z", "m", "1", "h2", {"score": 0.95}, "block", "score >= 0.9 -> block"
            ),
            AuditRecord("2026-01-03T00:00:00.000000Z", "n", "2", "h3", {"value": 3}, "allow", "default -> allow"),
        ]
    )
    assert [r.input_hash for r in log.query(action="allow")] == ["h1", "h3"]
    assert [r.input_hash for r in log.query(model="m")] == ["h1", "h2"]
    assert [r.input_hash for r in log.query(since="2026-01-02")] == ["h2", "h3"]
    assert [r.input_hash for r in log.query(until="2026-01-02")] == ["h1"]
    assert [r.input_hash for r in log.query(limit=1)] == ["h1"]
    assert next(log.query(action="block")).scores == {"score": 0.95}
    log.close()


def test_decision_config_without_rules_is_refused():
    with pytest.raises(ConfigError, match="rules"):
        ModelConfig.from_dict({"decision": {"rules": [], "default": "x"}})
    assert DecisionConfig.model_validate({"rules": [{"at_least": 0, "action": "a"}], "default": "b"}).audit


def test_a_model_with_a_journal_moves_it_into_the_log_on_close(tasks, audit_log, tmp_path):
    folder = Path(shutil.copytree(tasks.root / "triage", tmp_path / "repo" / "triage"))
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["decision"]["audit_group_ms"] = 60_000  # nothing moves by the interval within this test
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    model = forwardpass.load("triage", repository=tmp_path / "repo")
    predictions = model.predict([RECORD, RECORD])
    assert all("action" in p for p in predictions)
    model.close()
    with sqlite3.connect(audit_log) as plain_reader:  # in the table itself, not moved there by a query
        assert plain_reader.execute("SELECT count(*) FROM decisions").fetchone() == (2,)
    assert not list(audit_log.with_name(audit_log.name + ".pending").iterdir())


def test_utc_now_sorts_and_matches_the_clock():
    from datetime import UTC, datetime

    from forwardpass.decisions.audit import utc_now

    before = datetime.now(UTC)
    stamps = [utc_now() for _ in range(1000)]
    after = datetime.now(UTC)
    assert stamps == sorted(stamps)
    parsed = datetime.strptime(stamps[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before.replace(microsecond=0) <= parsed <= after


def _linear_model(folder: Path, weights: list[list[float]], config: dict[str, Any]) -> None:
    """x @ weights as `y`, a real ONNX graph, with `config` beside it."""
    matrix = np.asarray(weights, np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", matrix.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", matrix.shape[1]])],
        initializer=[onnx.numpy_helper.from_array(matrix, "W")],
    )
    (folder / "1").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "1" / "model.onnx")
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def test_rules_on_a_classifier_without_probabilities_read_its_decision_scores(audit_log, tmp_path):
    """A classifier answering decision scores (activation: decision, a LinearSVC's margins) has scores beyond
    [0, 1]: rules on them are kept, and each margin gets what its bounds say."""
    _linear_model(
        tmp_path / "margin",
        [[1.0], [0.0]],
        {
            "postprocess": {
                "kind": "classification",
                "output": "y",
                "activation": "decision",
                "labels": ["ok", "fraud"],
            },
            "decision": {
                "rules": [
                    {"label": "fraud", "at_least": 2.0, "action": "block"},
                    {"label": "fraud", "above": -1.0, "action": "review"},
                ],
                "default": "allow",
            },
        },
    )
    model = forwardpass.load("margin", repository=tmp_path)
    margins = [3.5, 2.0, 1.999, 0.0, -1.0, -4.0]
    answers = [model.predict(np.array([margin, 0.0], np.float32)) for margin in margins]
    expected = ["block" if m >= 2.0 else "review" if m > -1.0 else "allow" for m in np.array(margins, np.float32)]
    assert (
        [answer["action"] for answer in answers] == expected == ["block", "block", "review", "review", "allow", "allow"]
    )
    assert [row.action for row in AuditLog(audit_log).query()] == expected
    model.close()


@pytest.mark.parametrize(
    ("weights", "config", "refusal"),
    [
        (  # two targets: a rule on 'value' has no one value to read
            [[1.0, 2.0], [0.0, 1.0]],
            {
                "postprocess": {"kind": "regression", "output": "y"},
                "decision": {"score": "value", "rules": [{"at_least": 1.0, "action": "block"}], "default": "allow"},
            },
            r"decision.score 'value': output 'y' gives 2 values an item \(\[2\]\)",
        ),
        (  # no class names: its classes are named by index, and 'cat' is none of them
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            {
                "postprocess": {"kind": "classification", "output": "y", "activation": "softmax"},
                "decision": {"rules": [{"label": "cat", "at_least": 0.5, "action": "block"}], "default": "allow"},
            },
            r"no class 'cat'; its classes are \['0', '1', '2'\]",
        ),
    ],
)
def test_rules_the_model_cannot_answer_are_refused_at_load_not_at_each_request(tmp_path, weights, config, refusal):
    _linear_model(tmp_path / "user", weights, config)
    with pytest.raises(ConfigError, match=refusal):
        forwardpass.load("user", repository=tmp_path)


def test_a_rule_on_a_class_index_of_a_classifier_without_names_is_decided(audit_log, tmp_path):
    _linear_model(
        tmp_path / "indexed",
        [[1.0], [0.0]],
        {
            "postprocess": {"kind": "classification", "output": "y", "activation": "sigmoid"},
            "decision": {"rules": [{"label": "1", "at_least": 0.7, "action": "block"}], "default": "allow"},
        },
    )
    model = forwardpass.load("indexed", repository=tmp_path)
    logits = np.array([2.0, 0.8473, 0.8472, -3.0], np.float32)
    answers = [model.predict(np.array([logit, 0.0], np.float32)) for logit in logits]
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    expected = ["block" if p >= 0.7 else "allow" for p in probabilities]
    assert [answer["action"] for answer in answers] == expected == ["block", "block", "allow", "allow"]
    model.close()


def test_the_audit_row_holds_the_score_each_rule_read_beyond_the_classes_answered(audit_log, tmp_path):
    """top_k: 1 answers the top class alone; the rules read class 'c' too. Its score was left out of the audit
    row (only the answered top_k was recorded), so a decision on it could not be checked from the log."""
    _linear_model(
        tmp_path / "three",
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        {
            "postprocess": {"kind": "classification", "output": "y", "activation": "none", "labels": ["a", "b", "c"]},
            "decision": {"rules": [{"label": "c", "at_least": 0.25, "action": "review"}], "default": "allow"},
        },
    )
    model = forwardpass.load("three", repository=tmp_path)
    answers = [model.predict(np.array(p, np.float32), top_k=1) for p in ([0.6, 0.1, 0.3], [0.6, 0.3, 0.1])]
    assert [answer["action"] for answer in answers] == ["review", "allow"]
    assert [[entry["label"] for entry in answer["top_k"]] for answer in answers] == [["a"], ["a"]]
    rows = list(AuditLog(audit_log).query())
    read = [{entry["label"]: entry["score"] for entry in row.scores["top_k"]} for row in rows]
    assert [(row.action, scores["a"], scores["c"]) for row, scores in zip(rows, read, strict=True)] == [
        ("review", pytest.approx(0.6), pytest.approx(0.3)),
        ("allow", pytest.approx(0.6), pytest.approx(0.1)),
    ]
    model.close()
