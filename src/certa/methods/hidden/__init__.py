"""Methods fitted on the last-layer hidden state that generation already recorded (probe, Mahalanobis)."""
