"""AdaMLLM domain post-training for multimodal LLMs, at cluster scale on Ray."""

__version__ = "0.1.0"
