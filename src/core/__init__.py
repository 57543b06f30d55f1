"""What every layer may use: errors, value checks, atomic files, checkpoint I/O, provenance and the rename table."""
