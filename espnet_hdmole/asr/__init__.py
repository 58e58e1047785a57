"""The LLM-based ASR model and its parts."""
