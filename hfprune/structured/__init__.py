"""Structured pruning: importance criteria for heads, neurons and channels (registered by name), the budget search
that picks which units stay, refinement of what was picked (mask rearrangement, mask tuning, reconstruction),
hidden-size (residual-stream) pruning, and `prune()`, the one-shot driver that ties them to surgery;
`prune_checkpoint()` drives the same for a checkpoint on disk, one block in memory at a time (`offload.py`)."""
