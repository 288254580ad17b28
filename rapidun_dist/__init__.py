"""RapidUn: influence-weighted LoRA unlearning, distributed."""

__version__ = "0.1.0"
