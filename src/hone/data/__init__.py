"""Training data: read any supported format into canonical chat form, validate it, render it for a model."""

from hone.data.formats import (
    Dataset,
    Example,
    PreferenceExample,
    Problem,
    load_chat_examples,
    load_preference_examples,
    read_dataset,
)
from hone.data.validate import ValidationReport, find_duplicates, validate_file

__all__ = [
    "Dataset",
    "Example",
    "PreferenceExample",
    "Problem",
    "ValidationReport",
    "find_duplicates",
    "load_chat_examples",
    "load_preference_examples",
    "read_dataset",
    "validate_file",
]
