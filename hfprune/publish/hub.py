"""Publishing a pruned model to the Hugging Face Hub: weights, config, pruning_config.json, tokenizer and a
model card, in one commit.

Everything is first written to a local directory, then uploaded with huggingface_hub (`create_repo` +
`upload_folder`, which makes a single commit). If the upload fails the directory stays where it is, and the error
says where and how to retry. Tokens are passed to huggingface_hub only: never logged, printed or written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch.nn as nn

from ..checkpoint import save_pretrained
from ..errors import HubError
from .card import write_card
from .summary import summarize

DEFAULT_COMMIT_MESSAGE = "Upload model pruned with hfprune"
# Exception class names (of httpx, httpx2 and requests alike) that mean the Hub could not be reached at all.
_NETWORK_ERRORS = {"TransportError", "NetworkError", "ConnectError", "TimeoutException", "ConnectionError", "Timeout"}


def resolve_token(token: str | bool | None) -> str:
    """The token to push with, or a HubError naming the ways to provide one. No network call is made."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise HubError("HF_HUB_OFFLINE is set, so nothing can be pushed: unset it (or set HF_HUB_OFFLINE=0).")
    if token is False:
        raise HubError("token=False disables authentication, but pushing to the Hub needs a token with write access.")
    token = token or get_token()
    if not token:
        raise HubError(
            "No Hugging Face token found. Log in once with `hf auth login`, set the HF_TOKEN environment variable, "
            "or pass token=... (a token with write access: https://huggingface.co/settings/tokens)."
        )
    return token


def check_repo_id(repo_id: str) -> None:
    """A HubError unless `repo_id` is a valid `namespace/name` (the card's loading snippets need the namespace)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubError(f"{repo_id!r} is not a valid Hub repository id: {error}") from None
    if repo_id.count("/") != 1:
        raise HubError(
            f"{repo_id!r} is not a Hub repository id of the form 'namespace/name', where namespace is your user name "
            "or an organization you belong to"
        )


def _is_network_error(error: BaseException) -> bool:
    return isinstance(error, OSError) or bool({c.__name__ for c in type(error).__mro__} & _NETWORK_ERRORS)


def _hub_error(error: Exception, repo_id: str, folder: Path, token: str) -> HubError:
    """Turn what huggingface_hub raised into a message that says what went wrong and what to do."""
    from huggingface_hub import constants

    namespace = repo_id.split("/")[0] if "/" in repo_id else "your user name"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status == 401:
        problem = (
            "the Hub refused the token (401 Unauthorized): it is invalid, expired or revoked. Log in again with "
            "`hf auth login`, set HF_TOKEN, or pass a valid `token`"
        )
    elif status == 403:
        problem = (
            f"the token may not create or write to {repo_id!r} (403 Forbidden). Use a token with write access "
            f"(fine-grained tokens need write permission on {namespace!r}), and check that {namespace!r} is your "
            "user name or an organization you belong to"
        )
    elif status == 404:
        problem = (
            f"{repo_id!r} was not found (404 Not Found): check the repository id, and that the namespace "
            f"{namespace!r} exists and is your user name or an organization you can write to"
        )
    elif _is_network_error(error):
        problem = (
            f"could not reach the Hub at {constants.ENDPOINT} ({type(error).__name__}: {error}). Check the network "
            "connection, any proxy, and HF_ENDPOINT"
        )
    else:
        problem = f"the push to {repo_id!r} failed ({type(error).__name__}: {error})"
    message = (
        f"Could not push to the Hub: {problem}. Nothing was lost: the files are in {folder}; once fixed, upload "
        f"them with `hf upload {repo_id} {folder}` or push again."
    )
    # huggingface_hub never puts the token in its messages; this is a guard in case a server echoes it back.
    # (Only real-looking tokens: replacing a one-letter test token would garble the message.)
    return HubError(message.replace(token, "<token>") if len(token) >= 8 else message)


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> str:
    """Create `repo_id` if needed and upload everything in `folder` to it in one commit.

    Args:
        folder: a local directory, already complete (weights, config, card...).
        repo_id: `namespace/name`.
        token: a write token; defaults to `HF_TOKEN` or the token saved by `hf auth login`.
        private: make a new repository private (ignored when it exists).
        commit_message: the commit's title.

    Returns:
        The URL of the commit.

    Raises:
        HubError: no token, refused token, forbidden or unknown namespace, network down. `folder` is untouched.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"{folder} is not a directory: nothing to push")
    check_repo_id(repo_id)
    token = resolve_token(token)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=commit_message)
    except Exception as error:  # everything huggingface_hub or the network can raise gets one clear message
        raise _hub_error(error, repo_id, folder, token) from error
    return info.commit_url


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    report=None,
    tokenizer=None,
    processor=None,
    metrics: dict[str, dict] | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    base_model: str | None = None,
) -> str:
    """Publish a (pruned) model to the Hub in one commit, with a model card, so that
    `hfprune.from_pretrained(repo_id)` rebuilds it shape for shape.

    The commit holds safetensors weights, `config.json`, `pruning_config.json` (written by
    `hfprune.save_pretrained`), the tokenizer or processor files, and a `README.md` card: params and FLOPs
    before/after, your measured `metrics`, heads/neurons kept per layer with a plot, the recipe, and how to load.
    The files are staged in a temporary directory first; if the upload fails, the error names that directory, which
    is kept.

    Args:
        model: the model to publish.
        repo_id: `namespace/name` on the Hub.
        report: the `PruningReport` of `hfprune.prune`, for the before/after numbers (else the record's digest).
        tokenizer, processor: saved alongside, when given.
        metrics: measured numbers for the card, e.g.
            `{"before": {"latency_ms": 12.1, "accuracy": 0.91}, "after": {"latency_ms": 6.3, "accuracy": 0.90}}`.
        private: make a new repository private.
        token: a write token; defaults to `HF_TOKEN` or the token saved by `hf auth login`. It is checked before
            anything is written or sent.
        commit_message: the commit's title.
        base_model: Hub id of the dense model, for the card's metadata; guessed from the config when not given.

    Returns:
        The URL of the commit.

    Raises:
        HubError: see `upload_folder`.

    Example:
        ```python
        >>> report = hfprune.prune(model, recipe, calibration=batches)
        >>> hfprune.push_to_hub(model, "me/bert-pruned", report=report, tokenizer=tokenizer)
        ```
    """
    check_repo_id(repo_id)  # fail before staging gigabytes
    resolve_token(token)
    staging = Path(tempfile.mkdtemp(prefix="hfprune-push-"))
    save_pretrained(model, staging)
    for files in (tokenizer, processor):
        if files is not None:
            files.save_pretrained(staging)
    summary = summarize(model, report=report, metrics=metrics, base_model=base_model)
    write_card(staging, summary, repo_id)
    url = upload_folder(staging, repo_id, token=token, private=private, commit_message=commit_message)
    shutil.rmtree(staging, ignore_errors=True)
    return url
