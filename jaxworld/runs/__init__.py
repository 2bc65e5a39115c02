"""A trained run on disk: its checkpoints, its config, and the models it
pins (a dynamics run's tokenizer and LAM runs)."""
