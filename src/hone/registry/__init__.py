"""The model registry: every fine-tuned model version with its lineage (data -> job -> run -> weights -> eval)."""
