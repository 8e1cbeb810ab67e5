"""dspy_actors: the DSPy programming model on a supervised actor runtime."""
