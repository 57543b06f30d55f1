"""Acting on fresh bars after training: the broker interface and the checks of the bars a deployed agent reads."""
