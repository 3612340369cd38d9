"""Post-training (SPEC §3): data stream, per-worker DeepSpeed loop, Ray Train wiring, export."""
