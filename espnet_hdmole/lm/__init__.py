"""N-gram language models over an LLM's tokens, for shallow fusion in decoding."""
