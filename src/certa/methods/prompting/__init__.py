"""Methods that ask the model about its answer and read the next-token distribution of the reply."""
