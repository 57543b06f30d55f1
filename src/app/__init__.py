"""Run-level code below the commands: the body of a training job, restoring a checkpoint, config checks, loggers."""
