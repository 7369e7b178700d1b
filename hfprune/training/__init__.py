"""Pruning while fine-tuning: `PruningCallback` for the transformers Trainer, which hands the work to one strategy
chosen from the recipe (structured: heads and neurons; or weights), the schedules it prunes on, distillation from
the dense model, and optimizer state that follows the surgery when the model shrinks."""
