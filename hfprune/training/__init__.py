"""Pruning while fine-tuning: `PruningCallback` for the transformers Trainer, the schedules it prunes on,
distillation from the dense model, and optimizer state that follows the surgery when the model shrinks."""
