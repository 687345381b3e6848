"""Methods that read the answer's own token log-probs (LM-Polygraph's white-box log-prob family): free, no
extra forward pass except PMI's. Each estimator is a pure NumPy function beside a thin registered class."""
