"""The LightningModules and their hooks, callbacks, curriculum, profit target, curve-fit stopping and populations."""
