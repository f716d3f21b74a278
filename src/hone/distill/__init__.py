"""Distillation: a teacher model (any OpenAI-compatible endpoint) labels or writes the training data a small
student learns from; every example keeps its lineage."""
