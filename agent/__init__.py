"""The conversation: configuration, models, the local LLM, per-session state."""
