"""Capability labels from a judge asked twice with the responses swapped (DMoERM, DESIGN §3).

``label_pairs(judge, pairs, capabilities)`` keeps a pair for a capability only when the judge
names the same response in both orders. Judges: :class:`HTTPJudge` (any OpenAI-compatible
chat-completions server), :class:`RewardModelJudge` (a trained reward model) and
:class:`PromptedLMJudge` (a chat LM such as SmolLM2, read from its answer-letter log-probs).
"""

from rewardjax.judge.base import (
    CAPABILITY_DESCRIPTIONS,
    Judge,
    JudgeError,
    LabelCounts,
    Labelled,
    Query,
    ask,
    judge_messages,
    label_pairs,
    parse_verdict,
    swap,
)
from rewardjax.judge.http import HTTPJudge, Secret, endpoint
from rewardjax.judge.local import PromptedLMJudge, RewardModelJudge

__all__ = [
    "CAPABILITY_DESCRIPTIONS",
    "HTTPJudge",
    "Judge",
    "JudgeError",
    "LabelCounts",
    "Labelled",
    "PromptedLMJudge",
    "Query",
    "RewardModelJudge",
    "Secret",
    "ask",
    "endpoint",
    "judge_messages",
    "label_pairs",
    "parse_verdict",
    "swap",
]
