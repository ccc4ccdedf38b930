"""Training: the Trainer loop, its configuration, checkpoints and distributed launch."""
