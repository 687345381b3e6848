"""certa: calibrated confidence for every answer a language model gives."""

__version__ = "0.1.0"
