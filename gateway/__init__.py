"""llama-gateway: an OpenAI-compatible gateway with pluggable policies for llama-server."""

__version__ = "0.1.0"
