"""Methods that compare K sampled answers with the greedy one (the samples are generated once)."""
