"""Errors hfprune raises. Each names the thing that is wrong, so a user never has to read a torch traceback."""


class HfpruneError(Exception):
    """Base class of every error hfprune raises on purpose."""


class UnsupportedModelError(HfpruneError, ValueError):
    """The model's family has no adapter."""


class PruningSpecError(HfpruneError, ValueError):
    """A request to remove heads, neurons or layers that cannot be honoured (bad index, broken GQA ratio...)."""


class RecipeError(HfpruneError, ValueError):
    """A recipe with unknown, missing or ill-typed fields, or a budget that cannot be met."""


class CalibrationError(HfpruneError, ValueError):
    """Calibration data that cannot drive the chosen criterion."""


class DataError(HfpruneError, ValueError):
    """Calibration data that cannot be found, read or turned into batches."""


class CheckpointError(HfpruneError, ValueError):
    """A checkpoint on disk is missing, malformed or disagrees with itself."""


class HubError(HfpruneError, RuntimeError):
    """Publishing to the Hugging Face Hub failed (no token, refused token, no such namespace, no network).

    The message says what to do; it never contains the token, and the files that were to be pushed are kept."""


class UnsupportedTrainingError(HfpruneError, ValueError):
    """A training setup the pruning callback cannot prune correctly (FSDP1, DeepSpeed ZeRO-3, tensor parallelism).

    Raised at train begin, before anything is gated, and naming what is supported."""
