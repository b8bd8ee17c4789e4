"""How the next token is chosen from the logits: greedy, or sampled with temperature, top-k and top-p (in that
order, as transformers applies them), from a random generator of the request's own (seeded: reproducible whatever
else shares the batch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from forwardpass.errors import InputError

if TYPE_CHECKING:
    from forwardpass.generation.constraint import JsonSchema

__all__ = ["MAX_LOGPROBS", "SamplingParams", "log_probabilities", "penalize_repetition", "sample"]

MAX_LOGPROBS = 20  # OpenAI's limit on top_logprobs


@dataclass(frozen=True)
class SamplingParams:
    """One request's choices. `temperature` 0 is greedy; `max_new_tokens` None takes the model's default."""

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_k: int = 0  # 0: every token
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = field(default=())
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: the chosen token's log-probability and the k most likely tokens'
    schema: JsonSchema | None = None  # the output is a JSON document that follows it

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise InputError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be 0 (off) or more, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise InputError(f"top_logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from one row of logits [vocab]."""
    # shifted to a maximum of 0 before scaling: a tiny temperature then sends the others to -inf, never inf - inf
    with np.errstate(over="ignore"):
        scaled = (logits.astype(np.float64) - float(logits.max())) / params.temperature
    if 0 < params.top_k < scaled.shape[0]:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probabilities = np.exp(scaled - scaled.max())
    probabilities /= probabilities.sum()
    if params.top_p < 1:
        order = np.argsort(-probabilities, kind="stable")
        cumulative = np.cumsum(probabilities[order])
        # keep the most likely tokens up to and including the one that reaches top_p
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = np.zeros_like(probabilities)
        kept[keep] = probabilities[keep]
        probabilities = kept / kept.sum()
    cumulative = np.cumsum(probabilities)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    last: int = probabilities.shape[0] - 1
    return min(index, last)


def penalize_repetition(logits: np.ndarray, seen: set[int], penalty: float) -> np.ndarray:
    """One row of logits with those of the `seen` tokens divided by `penalty` where positive, multiplied where
    negative: transformers' RepetitionPenaltyLogitsProcessor, which generate() runs before any sampling step."""
    ids = np.fromiter(seen, np.int64, len(seen))
    ids = ids[ids < logits.shape[0]]
    penalized = logits.copy()
    chosen = penalized[ids]
    penalized[ids] = np.where(chosen < 0, chosen * penalty, chosen / penalty)
    return penalized


def log_probabilities(logits: np.ndarray, token: int, top: int) -> tuple[float, tuple[tuple[int, float], ...]]:
    """The model's log-probability of `token` (log-softmax of the raw logits, before temperature or truncation)
    and the `top` most likely tokens with theirs, most likely first."""
    shifted = logits.astype(np.float64) - float(logits.max())
    logs = shifted - np.log(np.exp(shifted).sum())
    best = np.argpartition(-logs, top - 1)[:top] if top else np.empty(0, np.int64)
    best = best[np.argsort(-logs[best], kind="stable")]
    return float(logs[token]), tuple((int(index), float(logs[index])) for index in best)
