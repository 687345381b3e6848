"""Methods that never look inside the model: classifiers over the question and answer text."""
