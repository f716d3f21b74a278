"""Evaluate candidates (base, k-shot, RAG, fine-tuned, external endpoints) on held-out chats: metrics with
confidence intervals, an LLM judge, forgetting probes, a verdict, and JSON + HTML reports."""

from hone.eval.config import EvalConfig, load_eval_config
from hone.eval.run import evaluate

__all__ = ["EvalConfig", "evaluate", "load_eval_config"]
