"""Examples of using hfprune as a user would: fine-tune and prune a text or speech classifier with a recipe
(`run_text_classification`, `run_speech_classification`) and the end-to-end demo (`demo`). Run them from the
repository root, e.g. `python -m scripts.examples.demo`; `run_text_classification.py` needs nothing but hfprune and
also runs by its path."""
