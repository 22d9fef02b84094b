"""Helpers the tests share (pyproject's pytest `pythonpath` puts tests/ on sys.path, so `from support.x import y`):

- tiny_models: tiny random checkpoints of every supported family, built locally;
- oracle: independent re-computations that pruned checkpoints are checked against;
- hub_server: a loopback Hugging Face Hub that the unmodified huggingface_hub client talks to;
- tiny_tasks: tiny local lm-eval tasks of all three request types, and suite files that name them.

Fixtures live in tests/conftest.py."""
