"""Serving smoke test: the artifact in a real vLLM OpenAI-compatible server, with and without speculative decoding."""

from quantkit.serving.smoke import ServeOptions, serve_test

__all__ = ["ServeOptions", "serve_test"]
