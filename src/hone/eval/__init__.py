"""Evaluate a base model against its fine-tuned adapter on held-out chats, with a JSON and HTML report."""

from hone.eval.run import EvalConfig, evaluate, load_eval_config

__all__ = ["EvalConfig", "evaluate", "load_eval_config"]
