"""hubprune: build a family of width-pruned GLU checkpoints, ready for from_pretrained and the Hub."""

__version__ = "0.1.0"
