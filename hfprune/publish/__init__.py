"""Showing and sharing a pruned model: the pruning report, the summary of a checkpoint, the console table, plots,
the model card, and the push to the Hub."""
