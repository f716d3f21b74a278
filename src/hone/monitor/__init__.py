"""Production monitoring: drift of captured traffic against the training data."""

from hone.monitor.drift import (
    ClassifierCheck,
    DriftConfig,
    DriftResult,
    MMDCheck,
    PromptEmbeddings,
    SampleTest,
    embed_prompts,
    embedding_drift,
    length_drift,
    prompt_drift,
    rate_drift,
)

__all__ = [
    "ClassifierCheck",
    "DriftConfig",
    "DriftResult",
    "MMDCheck",
    "PromptEmbeddings",
    "SampleTest",
    "embed_prompts",
    "embedding_drift",
    "length_drift",
    "prompt_drift",
    "rate_drift",
]
