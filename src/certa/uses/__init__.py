"""Acting on a confidence: test-time scaling by voting, self-correction and model cascades."""
