"""Methods that read the answer's own token log-probs and entropies: free, no extra forward pass."""
