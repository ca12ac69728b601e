"""The error hierarchy. Every user-facing failure is one of these, and its message is one line that names the
cause and the fix; the CLI prints it without a traceback (``--debug`` shows one)."""

from __future__ import annotations


class K2trtError(Exception):
    """Base of every error k2trt raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} ({self.hint})" if self.hint else msg


class ConfigError(K2trtError):
    """A config.json, recipe, YAML or option is invalid."""


class CheckpointError(K2trtError):
    """A checkpoint file is missing, corrupt, or does not match its config."""


class PlanError(K2trtError):
    """A parallel layout or memory plan is impossible."""


class LaunchError(K2trtError):
    """Launching, supervising or reaching a job failed."""


class GatewayError(K2trtError):
    """The HTTP gateway could not serve a request."""


class PluginUnavailable(K2trtError):
    """A custom kernel cannot run here; the message says why."""
