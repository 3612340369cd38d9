"""The embedded default: what `adamllm demo` runs on a machine without a GPU or a model hub."""
