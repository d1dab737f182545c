"""The environment variables the adapter reads (a module of its own: no SDK import)."""

__all__ = ["API_KEY_ENV", "BASE_URL_ENV"]

API_KEY_ENV = "OPENAI_API_KEY"
"""The environment variable read when no ``api_key`` is given."""

BASE_URL_ENV = "OPENAI_BASE_URL"
"""The environment variable read when no ``base_url`` is given."""
