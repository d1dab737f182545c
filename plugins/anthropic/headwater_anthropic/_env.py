"""The settings the adapter reads before any call (a module of its own: no SDK import)."""

__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "DEFAULT_MAX_TOKENS"]

API_KEY_ENV = "ANTHROPIC_API_KEY"
"""The environment variable read when no ``api_key`` is given."""

BASE_URL_ENV = "ANTHROPIC_BASE_URL"
"""The environment variable read when no ``base_url`` is given."""

DEFAULT_MAX_TOKENS = 1024
"""``max_tokens`` when none is given: the Messages API requires a limit on every call."""
