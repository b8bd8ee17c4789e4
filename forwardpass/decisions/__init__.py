"""From a prediction to an action: decision rules, the audit log every decision is written to, and the cost-based
choice of a threshold from an evaluation set."""

from forwardpass.decisions.audit import AUDIT_LOG_ENV, AuditLog, AuditRecord, default_audit_path, input_hash
from forwardpass.decisions.rules import Decider, Decision
from forwardpass.decisions.threshold import ThresholdChoice, choose_threshold

__all__ = [
    "AUDIT_LOG_ENV",
    "AuditLog",
    "AuditRecord",
    "Decider",
    "Decision",
    "ThresholdChoice",
    "choose_threshold",
    "default_audit_path",
    "input_hash",
]
